//! Meta's side of the wire, in one place: verifying what Meta sends us (webhook signatures,
//! `signed_request`), and calling Meta (Instagram Login OAuth and the Graph API) through one
//! client with timeouts, off the async threads.

pub mod client;
pub mod event_id;
pub mod http;
pub mod ids;
pub mod media;
pub mod send;
pub mod signature;
pub mod signed_request;
pub mod webhook;

pub use client::{
    ErrorClass, GraphError, IceBreaker, IceBreakerError, LongLivedToken, Me, MetaClient, MetaError,
    OAuthApp, OAuthClient, Recipient, ShortLivedToken, ThrottleScope, check_ice_breakers,
};
pub use ids::IdString;
pub use signature::{SignatureError, WebhookVerifier};
