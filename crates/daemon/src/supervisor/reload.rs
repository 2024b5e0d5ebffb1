//! Reload (SIGHUP): the difference between the running config and the new one, as a pure
//! [`plan`], and how the state applies it — removed tasks drain, changed tasks take their new
//! settings (workers whose process changes are replaced once idle), added tasks start.
//! `[queue]` and the control socket need a restart: [`keep_restart_settings`] keeps the old.

use std::time::Instant;

use super::event::Action;
use super::group::Group;
use super::state::{Phase, State};
use crate::config::{Config, TaskConfig};

/// What a reload changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Tasks no longer configured: they take no new jobs and drain.
    pub removed: Vec<String>,
    /// Tasks whose settings changed; `restart` when their workers must be replaced.
    pub changed: Vec<(TaskConfig, bool)>,
    /// Tasks new in the config.
    pub added: Vec<TaskConfig>,
}

/// The difference between the running config and the new one.
pub(crate) fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    for t in &old.tasks {
        if new.task(&t.name).is_none() {
            plan.removed.push(t.name.clone());
        }
    }
    for t in &new.tasks {
        match old.task(&t.name) {
            None => plan.added.push(t.clone()),
            Some(o) if o == t => {}
            Some(o) => plan.changed.push((t.clone(), o.needs_restart(t))),
        }
    }
    plan
}

/// Keeps the running `[queue]` and control socket in `new` (changing them needs a restart),
/// with a warning for each.
pub(crate) fn keep_restart_settings(old: &Config, new: &mut Config) {
    if new.queue != old.queue {
        tracing::warn!("the [queue] section changed: that needs a restart; keeping the old queue");
        new.queue = old.queue.clone();
    }
    if new.daemon.control_socket != old.daemon.control_socket {
        tracing::warn!(
            "daemon.control_socket changed: that needs a restart; keeping the old socket"
        );
        new.daemon.control_socket = old.daemon.control_socket.clone();
    }
}

impl State {
    /// Applies a reloaded config (its queue already bound to it). Ignored once stopping.
    pub(super) fn apply_reload(&mut self, new: Config, now: Instant, acts: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            tracing::info!("stopping: the reloaded config is not applied");
            return;
        }
        let plan = plan(&self.config, &new);
        for name in &plan.removed {
            if let Some(g) = self.groups.get_mut(name) {
                tracing::info!(task = %name, "task removed: draining its workers");
                g.configured = false;
                acts.push(Action::SetCapacity { task: name.clone(), capacity: 0 });
            }
        }
        let revived = plan.added.iter().filter(|t| self.groups.contains_key(&t.name));
        let revived: Vec<(TaskConfig, bool)> = revived.map(|t| (t.clone(), true)).collect();
        for (cfg, restart) in plan.changed.into_iter().chain(revived) {
            let Some(g) = self.groups.get_mut(&cfg.name) else { continue };
            tracing::info!(task = %cfg.name, restart, "task changed");
            if restart {
                g.generation += 1;
            }
            acts.push(Action::SetCapacity { task: cfg.name.clone(), capacity: cfg.held_jobs() });
            g.cfg = cfg;
            g.configured = true;
            g.crash_streak = 0;
            g.next_spawn = None;
        }
        for t in plan.added {
            if !self.groups.contains_key(&t.name) {
                tracing::info!(task = %t.name, "task added");
                acts.push(Action::SetCapacity { task: t.name.clone(), capacity: t.held_jobs() });
                self.groups.insert(t.name.clone(), Group::new(t));
            }
        }
        // Idle workers that no longer belong stop now; busy ones after their job.
        let (grace, kill_timeout) = (new.daemon.grace_period, new.daemon.kill_timeout);
        for w in self.workers.values_mut() {
            let Some(g) = self.groups.get(&w.group) else { continue };
            if w.is_idle() && (!g.configured || w.generation != g.generation) {
                w.begin_stop(grace.min(kill_timeout), kill_timeout, now, acts);
            }
        }
        self.config = new;
        self.reloads += 1;
        self.last_reload_error = None;
        for g in self.groups.values_mut() {
            g.maybe_more = true;
        }
        tracing::info!(reloads = self.reloads, "config reloaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkModel;
    use crate::supervisor::testing::{config, task};

    #[test]
    fn plan_lists_removed_changed_and_added() {
        let a = task("a", WorkModel::Oneshot);
        let b = task("b", WorkModel::Longlived);
        let old = config(vec![a.clone(), b.clone()]);
        assert_eq!(plan(&old, &old), Plan::default());

        let mut b2 = b.clone();
        b2.max_workers += 1;
        let mut a2 = a.clone();
        a2.command = vec!["other".into()];
        let c = task("c", WorkModel::Oneshot);
        let p = plan(&old, &config(vec![b2.clone(), c.clone()]));
        assert_eq!(p.removed, ["a"]);
        assert_eq!(p.changed, vec![(b2, false)]);
        assert_eq!(p.added, vec![c]);
        let p = plan(&old, &config(vec![a2.clone(), b]));
        assert_eq!(p.changed, vec![(a2, true)], "a new command replaces the workers");
    }

    #[test]
    fn queue_and_socket_changes_wait_for_a_restart() {
        let old = config(vec![task("a", WorkModel::Oneshot)]);
        let mut new = old.clone();
        new.queue.path = "/elsewhere.db".into();
        new.daemon.control_socket = "/elsewhere.sock".into();
        new.daemon.grace_period *= 2;
        keep_restart_settings(&old, &mut new);
        assert_eq!(new.queue, old.queue);
        assert_eq!(new.daemon.control_socket, old.daemon.control_socket);
        assert_ne!(new.daemon.grace_period, old.daemon.grace_period, "the rest applies");
    }
}
