//! tokengate: GitLab-style deploy tokens in front of any package or container
//! registry. A request flows one way through the modules:
//! [`route::normalize`] → [`route`] → [`format`] (credentials, access) →
//! [`cache`]/[`store`] (token record) → [`auth`] (the decision) → [`proxy`] (forward).

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod format;
pub mod metrics;
pub mod oci;
pub mod proxy;
pub mod route;
pub mod store;
pub mod tls;
pub mod token;
pub mod tokens;
