//! Test doubles for actors (tests only): a probe actor standing in for the next stage, so a
//! test asserts exactly which messages arrived (house style: quickwit's probe mailboxes).

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// Forwards every message it gets to a channel.
pub struct Probe<M>(std::marker::PhantomData<M>);

impl<M: ractor::Message + Sync> Actor for Probe<M> {
    type Msg = M;
    type State = mpsc::UnboundedSender<M>;
    type Arguments = mpsc::UnboundedSender<M>;
    async fn pre_start(
        &self,
        _: ActorRef<M>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }
    async fn handle(
        &self,
        _: ActorRef<M>,
        msg: M,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = tx.send(msg);
        Ok(())
    }
}

/// A probe actor and the channel its messages arrive on.
pub async fn probe<M: ractor::Message + Sync>() -> (ActorRef<M>, mpsc::UnboundedReceiver<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (a, _) = Actor::spawn(None, Probe::<M>(std::marker::PhantomData), tx)
        .await
        .unwrap();
    (a, rx)
}

/// The next message a probe got; panics naming `what` after 10 s.
pub async fn next<M>(rx: &mut mpsc::UnboundedReceiver<M>, what: &str) -> M {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 10 s"))
        .expect("probe alive")
}
