//! What each image runs as, read from its registry: the image config's
//! `User`, and for a user name the UID in the image's own `/etc/passwd`
//! (topmost layer wins). The engine stays pure: this crate produces the
//! [`ImageFacts`](kube_hardener_engine::ImageFacts) it takes as input.
//!
//! Every size is bounded (manifest and config blobs, each layer downloaded and
//! what it unpacks to, layers searched, platforms, images per review), every
//! wait has a deadline, and every failure becomes
//! [`ImageUser::Unknown`](kube_hardener_engine::ImageUser) with a reason.

mod bounded;
mod credentials;
mod distribution;
mod layers;
mod reference;
mod resolver;
mod user;

pub use credentials::{Credentials, CredentialsError, Login};
pub use layers::{LayerError, PasswdInLayer, find_passwd};
pub use resolver::{
    MAX_IMAGES_PER_REVIEW, NoObserver, Observer, Resolver, ResolverConfig, ResolverError, Source,
    outcome_label,
};
pub use user::{ConfigUser, merge_platforms, parse_config_user, passwd_uid, resolve_name};
