use bytes::Bytes;

use crate::Store;
use crate::error::Error;
use crate::types::{KeyValue, PutOptions};

/// What the mutation passed to [`guaranteed_update`] wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Store this value.
    Put(Bytes),
    /// Leave the key as it is (a no-op update writes nothing).
    Unchanged,
}

/// The read-modify-write loop of Kubernetes' `GuaranteedUpdate`: reads `key`,
/// calls `mutate` with its current value (`None` when absent), and writes the
/// result conditionally on the revision it read. When another write came
/// first, it reads again and calls `mutate` again, until a write lands or
/// `mutate` fails. A missing key is created.
///
/// Returns the key as stored (or as found, for [`Update::Unchanged`]).
pub async fn guaranteed_update<S, E, F>(
    store: &S,
    key: &str,
    opts: PutOptions,
    mut mutate: F,
) -> Result<Option<KeyValue>, E>
where
    S: Store + ?Sized,
    E: From<Error>,
    F: FnMut(Option<&KeyValue>) -> Result<Update, E>,
{
    loop {
        let current = store.get(key).await.map_err(E::from)?;
        let value = match mutate(current.as_ref())? {
            Update::Unchanged => return Ok(current),
            Update::Put(value) => value,
        };
        let result = match &current {
            Some(kv) => store.update(key, value, kv.mod_revision, opts).await,
            None => store.create(key, value, opts).await,
        };
        match result {
            Ok(kv) => return Ok(Some(kv)),
            Err(Error::Conflict { .. } | Error::AlreadyExists { .. } | Error::NotFound { .. }) => {
                tracing::trace!(key, "guaranteed_update retrying after a concurrent write");
                continue;
            }
            Err(e) => return Err(E::from(e)),
        }
    }
}
