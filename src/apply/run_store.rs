//! The run's own store: its directory beside the API model, its journal, its state (backup
//! location, paused autoscaler, rollout stamp), the new PKI once issued, and the operator's
//! certificates. Everything apply keeps between runs of the same plan lives here.

use crate::apply::journal::Journal;
use crate::apply::store::{NewPki, RunDir, RunState};
use crate::apply::walker::StepError;
use crate::model::apimodel::CertificateProfile;
use std::sync::{Arc, Mutex};

pub struct RunStore {
    pub run: RunDir,
    pub journal: Journal,
    pub state: Mutex<RunState>,
    /// The plan's digest (hex); its first 16 characters stamp everything on the nodes.
    pub plan_digest: String,
    /// The operator's certificates (`--certificate-profile`), read again and checked against
    /// the digest the plan recorded.
    pub supplied: Option<Arc<CertificateProfile>>,
    pki: Mutex<Option<Arc<NewPki>>>,
}

impl RunStore {
    pub fn new(run: RunDir, journal: Journal, plan_digest: String) -> Self {
        let state = Mutex::new(run.load_state());
        RunStore { run, journal, state, plan_digest, supplied: None, pki: Mutex::new(None) }
    }

    pub fn stamp(&self) -> String {
        self.plan_digest.chars().take(16).collect()
    }

    /// The new PKI: issued by this run, or persisted by an earlier run of the plan.
    pub fn pki(&self) -> Result<Arc<NewPki>, StepError> {
        if let Some(p) = self.pki.lock().expect("pki lock").clone() {
            return Ok(p);
        }
        match NewPki::load(&self.run.pki_dir())? {
            Some(p) => {
                let p = Arc::new(p);
                *self.pki.lock().expect("pki lock") = Some(p.clone());
                Ok(p)
            }
            None => Err(StepError::new("the new certificates have not been issued yet (issuePki has not run)")),
        }
    }

    pub fn set_pki(&self, pki: NewPki) -> Arc<NewPki> {
        let pki = Arc::new(pki);
        *self.pki.lock().expect("pki lock") = Some(pki.clone());
        pki
    }

    pub fn save_state(&self) -> Result<(), StepError> {
        let state = self.state.lock().expect("state lock").clone();
        self.run.save_state(&state).map_err(StepError::from)
    }
}
