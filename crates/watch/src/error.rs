//! The errors of the watch hub.

/// Why a [`Hub`](crate::Hub) could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The hub spawns its catch-up task on the current tokio runtime, and there is none.
    #[error("the watch hub must be created inside a tokio runtime: it spawns its catch-up task")]
    NoRuntime,
    /// A [`HubConfig`](crate::HubConfig) field has a value the hub cannot work with.
    #[error("invalid watch hub config: {field} {problem}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What is wrong with its value.
        problem: &'static str,
    },
}

/// Why a watch could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// [`Hub::shutdown`](crate::Hub::shutdown) was called: the hub delivers nothing any more.
    #[error("the watch hub is shut down")]
    ShutDown,
}
