//! The Remote Workers API (`google.devtools.remoteworkers.v1test2`, bots.proto and
//! worker.proto), the part of it a worker needs: `CreateBotSession` and
//! `UpdateBotSession`. `bazel-remote-apis` does not ship it, so the messages are
//! written here with prost's derive, field numbers as in the published protos.

use std::time::Duration;

use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use bazel_remote_apis::google::rpc::Status;
use tonic::codegen::http::uri::PathAndQuery;

use crate::{Client, ReapiError};

#[derive(Clone, PartialEq, prost::Message)]
pub struct BotSession {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub bot_id: String,
    #[prost(enumeration = "BotStatus", tag = "3")]
    pub status: i32,
    #[prost(message, optional, tag = "4")]
    pub worker: Option<Worker>,
    #[prost(message, repeated, tag = "5")]
    pub leases: Vec<Lease>,
    #[prost(message, optional, tag = "6")]
    pub expire_time: Option<Timestamp>,
    #[prost(string, tag = "7")]
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum BotStatus {
    Unspecified = 0,
    Ok = 1,
    Unhealthy = 2,
    HostRebooting = 3,
    BotTerminating = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LeaseState {
    Unspecified = 0,
    Pending = 1,
    Active = 2,
    Completed = 4,
    Cancelled = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(string, tag = "7")]
    pub id: String,
    #[prost(message, optional, tag = "8")]
    pub payload: Option<Any>,
    #[prost(message, optional, tag = "9")]
    pub result: Option<Any>,
    #[prost(enumeration = "LeaseState", tag = "2")]
    pub state: i32,
    #[prost(message, optional, tag = "3")]
    pub status: Option<Status>,
    #[prost(message, optional, tag = "4")]
    pub requirements: Option<Worker>,
    #[prost(message, optional, tag = "5")]
    pub expire_time: Option<Timestamp>,
    /// Deprecated in favour of `payload`, kept so the message round-trips.
    #[prost(string, tag = "1")]
    pub assignment: String,
    #[prost(message, optional, tag = "6")]
    pub inline_assignment: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Worker {
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<Device>,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
    #[prost(message, repeated, tag = "3")]
    pub configs: Vec<Property>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub handle: String,
    #[prost(message, repeated, tag = "2")]
    pub properties: Vec<Property>,
}

/// `Worker.Property`, `Worker.Config` and `Device.Property` have one shape.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Property {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Property {
    pub fn new(key: &str, value: &str) -> Property {
        Property {
            key: key.into(),
            value: value.into(),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub parent: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateBotSessionRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub bot_session: Option<BotSession>,
}

const CREATE: &str = "/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession";
const UPDATE: &str = "/google.devtools.remoteworkers.v1test2.Bots/UpdateBotSession";

impl Client {
    async fn bots_unary<Req, Resp>(
        channel: crate::Chan,
        path: &'static str,
        req: Req,
        wait: Duration,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        // The deadline goes to the server (grpc-timeout), which holds the call open
        // for most of it while it waits for work.
        let mut req = tonic::Request::new(req);
        req.set_timeout(wait);
        grpc.unary(req, PathAndQuery::from_static(path), codec)
            .await
            .map(|r| r.into_inner())
    }

    /// `CreateBotSession` under this client's instance. The server may hold the call
    /// while it looks for work, up to most of `wait`.
    pub fn create_bot_session(
        &self,
        session: BotSession,
        wait: Duration,
    ) -> Result<BotSession, ReapiError> {
        let req = CreateBotSessionRequest {
            parent: self.instance().to_string(),
            bot_session: Some(session),
        };
        let ch = self.channel();
        self.block(
            "CreateBotSession",
            wait + Duration::from_secs(5),
            async move { Self::bots_unary(ch, CREATE, req, wait).await },
        )
    }

    /// `UpdateBotSession`: the whole session with its leases' states; the answer holds
    /// the leases the server wants run (and cancellations).
    pub fn update_bot_session(
        &self,
        session: BotSession,
        wait: Duration,
    ) -> Result<BotSession, ReapiError> {
        let req = UpdateBotSessionRequest {
            name: session.name.clone(),
            bot_session: Some(session),
        };
        let ch = self.channel();
        self.block(
            "UpdateBotSession",
            wait + Duration::from_secs(5),
            async move { Self::bots_unary(ch, UPDATE, req, wait).await },
        )
    }
}
