//! Matching (label selectors, node selector terms, tolerations) lives in
//! `skiff-client`, shared with the controllers.

pub use skiff_client::selectors::*;
