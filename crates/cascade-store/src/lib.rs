//! cascade-store
