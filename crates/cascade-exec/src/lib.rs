//! cascade-exec
