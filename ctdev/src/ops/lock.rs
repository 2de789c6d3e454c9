//! The lock of one container as the operations hold it: the pin root's
//! container lock together with the resolution of the target that named
//! it, so the operation resolves its target under the lock *through the
//! lock* (no state shared between commands or threads). Takes the lock,
//! changes nothing.

use super::{Ctdev, Error, Resolved};
use crate::kernel::pins::{self, PinLock};
use crate::target::Target;

/// The lock of one container (see [`Ctdev::lock_container`]), holding the
/// resolution of the target that named it. Dereferences to the
/// [`PinLock`] witness the writes take. Released on drop.
#[derive(Debug)]
pub struct ContainerLock {
    lock: pins::ContainerLock,
    /// The target as the caller gave it.
    target: Target,
    /// What `target` resolved to when the lock was named (its policy id is
    /// the one locked).
    resolved: Resolved,
}

impl std::ops::Deref for ContainerLock {
    type Target = PinLock;
    fn deref(&self) -> &PinLock {
        &self.lock
    }
}

impl ContainerLock {
    /// The policy id locked.
    pub fn policy_id(&self) -> u64 {
        self.resolved.policy_id
    }

    /// The target whose resolution named this lock.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl Ctdev {
    /// Takes the lock of one container (the root shared, the container's
    /// own lock exclusive) for a change of that container only (allow,
    /// revoke, set, grant, take-back, add, del, its counters): changes of
    /// other containers run meanwhile, global changes do not. The target is
    /// resolved here to name the lock, and the resolution is kept in the
    /// lock: the operation resolves its target again under the lock with
    /// [`Ctdev::resolve_locked`], which reuses it when the cgroup is still
    /// there and refuses a different container.
    pub fn lock_container(&self, target: &Target) -> Result<ContainerLock, Error> {
        if !self.pins.exists() {
            return Err(self.not_under_policy(target));
        }
        let resolved = self.resolve(target)?;
        let lock = self.gone_is_not_under_policy(
            target,
            self.pins
                .lock_container(resolved.policy_id, self.config.lock_timeout),
        )?;
        Ok(ContainerLock {
            lock,
            target: target.clone(),
            resolved,
        })
    }

    /// Resolves `target` under `lock` and checks that it is still the
    /// container locked ([`Error::Replaced`] otherwise: its cgroup was
    /// removed and created again while the command waited).
    ///
    /// When `target` is the one that named the lock and the cgroup found
    /// then is still there (same directory, same id: one `statx`; cgroup
    /// ids are inode numbers, never reused), that resolution is taken:
    /// the name still leads to the container locked. Otherwise (another
    /// target, a policy id with no cgroup, the cgroup gone or re-created)
    /// the target is resolved from scratch. What this no longer notices is
    /// a runtime name moved, in those microseconds, to *another* cgroup
    /// while the old one still exists: the command then acts on the
    /// container the name named when it started, which is still there.
    pub fn resolve_locked(&self, lock: &ContainerLock, target: &Target) -> Result<Resolved, Error> {
        let reused = (lock.target == *target)
            .then_some(&lock.resolved)
            .filter(|r| {
                r.cgroup
                    .as_ref()
                    .is_some_and(|c| crate::cgroup::is_cgroup(&c.dir, c.id))
            })
            .cloned();
        let resolved = match reused {
            Some(r) => r,
            None => self.resolve(target)?,
        };
        self.check_lock(lock, target, resolved.policy_id)?;
        Ok(resolved)
    }
}
