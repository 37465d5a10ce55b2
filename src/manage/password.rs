//! The password workers: argon2id verifications run on a fixed set of threads of their own,
//! fed through a bounded queue. Never on the async runtime (each takes milliseconds of CPU),
//! and each thread keeps one buffer for argon2's 19 MiB of working memory and reuses it: with a
//! fresh allocation per verification (and tokio's blocking pool growing a thread per waiting
//! task) the allocator kept those blocks around, and a flood of 150 failed logins grew keygate
//! by over 200 MiB. Here memory is `workers` buffers, at most `workers` verifications run at
//! once, at most `queue` wait, and the rest are refused at once.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// Longest a login waits for its verification before it is answered 503.
const WAIT: Duration = Duration::from_secs(10);

struct Job {
    hash: String,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// Why a verification did not run: the queue was full, or it waited too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

pub struct PasswordWorkers {
    jobs: SyncSender<Job>,
}

impl PasswordWorkers {
    /// Starts `workers` threads behind a queue of `queue` places.
    pub fn start(workers: usize, queue: usize) -> PasswordWorkers {
        let (jobs, rx) = sync_channel::<Job>(queue);
        let rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(rx));
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("keygate-password-{n}"))
                .spawn(move || {
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok(job) = job else { return };
                        let ok = verify_with(&mut memory, &job.hash, job.password.as_bytes());
                        let _ = job.reply.send(ok);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password worker");
            }
        }
        PasswordWorkers { jobs }
    }

    /// Verifies `password` against a PHC `hash`.
    pub async fn verify(&self, hash: String, password: String) -> Result<bool, Busy> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(Job {
            hash,
            password,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return Err(Busy),
        }
        match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(ok)) => Ok(ok),
            _ => Err(Busy),
        }
    }
}

/// Largest argon2 working memory a stored hash may ask for (its `m` parameter), in blocks
/// of 1 KiB: keygate's own hashes use 19 MiB.
const MAX_BLOCKS: usize = 256 * 1024;

/// Verifies `password` against a PHC argon2 `hash`, in `memory` (grown to the hash's
/// parameters once, then reused). The hash comparison is constant-time.
fn verify_with(memory: &mut Vec<Block>, hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    if memory.len() < params.block_count() {
        memory.resize(params.block_count(), Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let blocks = &mut memory[..params.block_count()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, blocks)
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};

    #[tokio::test]
    async fn verifies_and_refuses_past_the_queue() {
        let hash = Argon2::default()
            .hash_password(b"right", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        let workers = PasswordWorkers::start(1, 1);
        assert_eq!(workers.verify(hash.clone(), "right".into()).await, Ok(true));
        assert_eq!(
            workers.verify(hash.clone(), "wrong".into()).await,
            Ok(false)
        );
        assert_eq!(
            workers.verify("not a hash".into(), "x".into()).await,
            Ok(false)
        );
        // One running, one waiting: a third at the same time is refused at once.
        let all = futures_util::future::join_all(
            (0..6).map(|_| workers.verify(hash.clone(), "wrong".into())),
        )
        .await;
        assert!(all.contains(&Err(Busy)), "{all:?}");
        assert!(all.contains(&Ok(false)), "{all:?}");
    }
}
