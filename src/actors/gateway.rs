//! `Gateway`: the one remote-capable actor of a node (design brief section 4).
//!
//! Every other actor's messages are local-only, so ractor_cluster announces only this one to
//! peers. It joins the process group `reel.gateway.{node_id}`, which is how peers find it. It
//! translates [`Request`]s into messages to local actors and answers with a
//! [`Reply`]; it routes [`TaskReport`]s from remote workers to the local
//! `JobActor` they belong to. It never does slow work inline: anything that waits on another
//! actor runs in a spawned task that answers the caller.
//!
//! Supervised by the `NodeSupervisor` (a failure stops the node, like the other top-level
//! actors). Payloads are JSON strings (see `cluster::protocol`): adding a request kind never
//! breaks decoding of the others.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::actors::job::JobMsg;
use crate::actors::video_supervisor::{live_status, VideoSupervisorMsg};
use crate::actors::worker_pool::PoolMsg;
use crate::actors::{Assignment, Ctx, TaskReply};
use crate::cluster::gateway_group;
use crate::cluster::protocol::{Reply, Request, TaskReport};

/// The gateway actor.
pub struct Gateway;

/// Startup arguments.
pub struct GatewayArgs {
    /// Node context.
    pub ctx: Ctx,
    /// The local worker pool (remote tasks are queued here).
    pub pool: ActorRef<PoolMsg>,
    /// The local video supervisor.
    pub videos: ActorRef<VideoSupervisorMsg>,
}

/// Messages: defined with the rest of the wire format in [`crate::cluster::protocol`].
pub use crate::cluster::protocol::GatewayMsg;

/// State: what requests are routed to.
pub struct GatewayState {
    ctx: Ctx,
    pool: ActorRef<PoolMsg>,
    videos: ActorRef<VideoSupervisorMsg>,
}

fn encode(reply: &Reply) -> String {
    serde_json::to_string(reply).unwrap_or_else(|_| r#"{"type":"Error","message":"encode"}"#.into())
}

async fn progress(videos: ActorRef<VideoSupervisorMsg>, video_id: String) -> Reply {
    Reply::Progress {
        progress: live_status(&videos, &video_id).await.map(|s| s.progress),
    }
}

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        ractor::pg::join(gateway_group(&args.ctx.node_id), vec![myself.get_cell()]);
        Ok(GatewayState {
            ctx: args.ctx,
            pool: args.pool,
            videos: args.videos,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Call(json, reply) => {
                let request: Request = match serde_json::from_str(&json) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(encode(&Reply::Error {
                            message: format!("unknown request: {e}"),
                        }));
                        return Ok(());
                    }
                };
                let answer = match request {
                    Request::Ping => Reply::Pong {
                        node: state.ctx.node_id.clone(),
                    },
                    Request::EnsureVideo { video_id } => {
                        match state.videos.cast(VideoSupervisorMsg::Ensure { video_id }) {
                            Ok(()) => Reply::Ok,
                            Err(e) => Reply::Error {
                                message: e.to_string(),
                            },
                        }
                    }
                    Request::VideoProgress { video_id } => {
                        let videos = state.videos.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(encode(&progress(videos, video_id).await));
                        });
                        return Ok(());
                    }
                    Request::SubmitTask {
                        task,
                        attempt,
                        job_node,
                    } => {
                        let a = Assignment {
                            task,
                            attempt,
                            reply: TaskReply::Remote {
                                node: job_node,
                                cluster: state.ctx.cluster.clone(),
                            },
                        };
                        match state.pool.cast(PoolMsg::Submit(a)) {
                            Ok(()) => Reply::Ok,
                            Err(e) => Reply::Error {
                                message: e.to_string(),
                            },
                        }
                    }
                    Request::CancelTask {
                        video_id,
                        task,
                        attempt,
                    } => {
                        let _ = state.pool.cast(PoolMsg::Cancel {
                            video_id,
                            task,
                            attempt,
                        });
                        Reply::Ok
                    }
                    Request::CancelVideo { video_id } => {
                        let _ = state.pool.cast(PoolMsg::CancelVideo { video_id });
                        Reply::Ok
                    }
                };
                let _ = reply.send(encode(&answer));
            }
            GatewayMsg::Report(json) => {
                let Ok(report) = serde_json::from_str::<TaskReport>(&json) else {
                    tracing::warn!("undecodable task report dropped");
                    return Ok(());
                };
                let name = state.ctx.name(&format!("job:{}", report.video_id()));
                if let Some(cell) = ractor::registry::where_is(name) {
                    let job: ActorRef<JobMsg> = cell.into();
                    let _ = job.cast(JobMsg::from(report));
                }
            }
        }
        Ok(())
    }
}
