//! A [`VmControl`] without real nodes: power states flip on timers the way a restart moves a
//! VM (stopping, stopped, starting, running). For the stand-in's own tests and for running the
//! ARM stand-in alone; the lab supervisor has its own that really stops a node's services.

use super::{PowerState, VmControl, VmTarget};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Timings of a simulated restart.
#[derive(Debug, Clone, Copy)]
pub struct RestartTimings {
    /// Time in `stopping`, then in `stopped`, then in `starting`.
    pub stopping: Duration,
    pub stopped: Duration,
    pub starting: Duration,
}

impl Default for RestartTimings {
    fn default() -> Self {
        Self {
            stopping: Duration::from_millis(100),
            stopped: Duration::from_millis(300),
            starting: Duration::from_millis(200),
        }
    }
}

/// VMs by computer name; unknown ones are running.
#[derive(Debug, Clone, Default)]
pub struct SimulatedVms {
    states: Arc<Mutex<HashMap<String, PowerState>>>,
    /// Every state each VM went through, in order, for tests to assert on.
    history: Arc<Mutex<Vec<(String, PowerState)>>>,
    timings: RestartTimings,
    failing: Arc<Mutex<Option<String>>>,
}

impl SimulatedVms {
    pub fn new(timings: RestartTimings) -> Self {
        Self { timings, ..Default::default() }
    }

    pub fn set(&self, computer_name: &str, state: PowerState) {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).insert(computer_name.to_string(), state);
        self.history.lock().unwrap_or_else(|e| e.into_inner()).push((computer_name.to_string(), state));
    }

    pub fn get(&self, computer_name: &str) -> PowerState {
        self.states.lock().unwrap_or_else(|e| e.into_inner()).get(computer_name).copied().unwrap_or(PowerState::Running)
    }

    /// The states `computer_name` was put in, oldest first.
    pub fn history(&self, computer_name: &str) -> Vec<PowerState> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(name, _)| name == computer_name)
            .map(|(_, state)| *state)
            .collect()
    }

    /// Makes every later restart fail with `message` (the VM comes back stopped).
    pub fn fail_restarts(&self, message: Option<String>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = message;
    }
}

#[async_trait::async_trait]
impl VmControl for SimulatedVms {
    fn power_state(&self, vm: &VmTarget) -> PowerState {
        self.get(&vm.computer_name)
    }

    async fn restart(&self, vm: &VmTarget) -> Result<(), String> {
        let name = &vm.computer_name;
        self.set(name, PowerState::Stopping);
        tokio::time::sleep(self.timings.stopping).await;
        self.set(name, PowerState::Stopped);
        tokio::time::sleep(self.timings.stopped).await;
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(message) = failing {
            return Err(message);
        }
        self.set(name, PowerState::Starting);
        tokio::time::sleep(self.timings.starting).await;
        self.set(name, PowerState::Running);
        Ok(())
    }
}
