use std::fmt;
use std::str::FromStr;

use crate::ParseLayerError;

/// A place in the request path where a caller waits; each has its own budget and metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// A whole client request, from arrival to response.
    Api,
    /// Waiting for a leader to be known (an election) before proposing or reading.
    LeaderWait,
    /// Handing a proposal to the consensus loop (including forwarding to the leader).
    Propose,
    /// Waiting for a proposal to be committed by a quorum.
    Commit,
    /// Confirming leadership for a linearizable read.
    ReadIndex,
    /// Waiting for a committed entry to be applied to the state machine.
    Apply,
    /// Pushing an event into a watch stream's bounded queue.
    WatchSend,
    /// One RPC to a peer.
    PeerRpc,
}

impl Layer {
    /// Every layer, in request-path order: for configs, docs and metric pre-registration.
    pub const ALL: [Layer; 8] = [
        Layer::Api,
        Layer::LeaderWait,
        Layer::Propose,
        Layer::Commit,
        Layer::ReadIndex,
        Layer::Apply,
        Layer::WatchSend,
        Layer::PeerRpc,
    ];

    /// The stable lowercase name used in metric labels, flags and error messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Layer::Api => "api",
            Layer::LeaderWait => "leader-wait",
            Layer::Propose => "propose",
            Layer::Commit => "commit",
            Layer::ReadIndex => "read-index",
            Layer::Apply => "apply",
            Layer::WatchSend => "watch-send",
            Layer::PeerRpc => "peer-rpc",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Layer {
    type Err = ParseLayerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Layer::ALL
            .into_iter()
            .find(|layer| layer.as_str() == name)
            .ok_or_else(|| ParseLayerError {
                name: name.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let names: Vec<_> = Layer::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(
            names,
            [
                "api",
                "leader-wait",
                "propose",
                "commit",
                "read-index",
                "apply",
                "watch-send",
                "peer-rpc"
            ]
        );
        for layer in Layer::ALL {
            assert_eq!(layer.as_str().parse::<Layer>(), Ok(layer));
            assert_eq!(layer.to_string(), layer.as_str());
        }
    }

    #[test]
    fn unknown_names_are_rejected() {
        for name in ["", "Commit", "read_index", "commit "] {
            assert_eq!(
                name.parse::<Layer>(),
                Err(ParseLayerError { name: name.into() })
            );
        }
    }
}
