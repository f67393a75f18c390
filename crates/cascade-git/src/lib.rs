//! cascade-git
