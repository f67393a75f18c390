//! cascade-lock
