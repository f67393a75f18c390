//! cascade-manifest
