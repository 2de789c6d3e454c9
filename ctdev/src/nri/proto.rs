//! NRI's protocol, generated at build time from NRI's `api.proto` (see
//! `build.rs`): the messages and the ttrpc `Plugin`/`Runtime` services.
#![allow(missing_docs, warnings, clippy::all, clippy::pedantic)]

/// Messages (`nri.pkg.api.v1alpha1`).
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/nri_api.rs"));
}

/// ttrpc stubs: the `Plugin` service ctdev serves and the `Runtime` client.
pub mod api_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/nri_api_ttrpc.rs"));
}
