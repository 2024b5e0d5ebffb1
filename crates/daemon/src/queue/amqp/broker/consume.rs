//! Consuming: one consumer per task whose prefetch is the capacity the daemon set, its
//! deliveries sent to the daemon's thread with the connection's epoch.

use lapin::message::DeliveryResult;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use super::Broker;
use super::connection::Consuming;
use super::messages::{Cmd, Ev};
use crate::queue::OpenMode;
use crate::queue::amqp::topology as topo;

impl Broker {
    /// Makes the consumer of `task` match its capacity: prefetch = capacity; 0 = no consumer.
    /// A per-consumer prefetch cannot change on a running consumer, so a new capacity
    /// replaces the consumer (deliveries of the old one stay valid on the same channel).
    pub(super) async fn apply_capacity(&mut self, task: &str) -> Result<(), lapin::Error> {
        if self.mode != OpenMode::Daemon {
            return Ok(());
        }
        let capacity = self.capacity.get(task).copied().unwrap_or(0);
        let queue = topo::task_queue(&self.exchange, task);
        let epoch = self.epoch;
        self.consumer_seq += 1;
        let tag = format!("procyard-{}-{task}-{}", std::process::id(), self.consumer_seq);
        let Some(live) = self.live.as_mut() else { return Ok(()) };
        if let Some(old) = live.consumers.get(task) {
            old.channel.basic_cancel(old.tag.clone().into(), BasicCancelOptions::default()).await?;
        }
        if capacity == 0 || !self.tasks.contains_key(task) {
            if let Some(old) = live.consumers.get_mut(task) {
                old.tag.clear();
            }
            return Ok(());
        }
        let channel = match live.consumers.get(task) {
            Some(c) if c.channel.status().connected() => c.channel.clone(),
            _ => live.conn.create_channel().await?,
        };
        channel.basic_qos(capacity, BasicQosOptions { global: false }).await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let sink = self.sink.clone();
        let cmd_tx = self.cmd_tx.clone();
        let task_name = task.to_owned();
        let consumer_tag = tag.clone();
        consumer.set_delegate(move |result: DeliveryResult| {
            let sink = sink.clone();
            let cmd_tx = cmd_tx.clone();
            let task = task_name.clone();
            let tag = consumer_tag.clone();
            async move {
                match result {
                    Ok(Some(delivery)) => {
                        sink.send(Ev::Delivery { epoch, task, delivery: Box::new(delivery) })
                    }
                    Ok(None) => {
                        let error = "consumer cancelled".to_owned();
                        let _ = cmd_tx.send(Cmd::ConsumerLost { epoch, task, tag, error });
                    }
                    Err(e) => {
                        let error = e.to_string();
                        let _ = cmd_tx.send(Cmd::ConsumerLost { epoch, task, tag, error });
                    }
                }
            }
        });
        live.consumers.insert(task.to_owned(), Consuming { channel, tag });
        Ok(())
    }
}
