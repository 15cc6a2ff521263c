//! Txn rules that do not touch storage: compares, and the duplicate-key check.

use std::collections::HashSet;

use crate::error::{Refusal, Result};
use crate::keys::KeyRange;
use crate::types::{Compare, CompareResult, CompareTarget, KeyValue, RequestOp, TxnRequest};

/// True when `kv` (the zero key-value for an absent key) satisfies `cmp`.
pub(crate) fn compare_kv(cmp: &Compare, kv: &KeyValue) -> bool {
    let ord = match &cmp.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
    };
    match cmp.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// Rejects a txn that puts one key twice on a path that can run, or puts a key it also deletes.
///
/// The rule is etcd's: within one list of ops, puts must be distinct and outside every delete
/// range, nested txns included; the two branches of a nested txn may repeat each other's puts,
/// since only one of them runs. Deletes may overlap deletes.
///
/// # Errors
/// [`Refusal::DuplicateKey`] naming the first repeated key.
pub fn check_txn_keys(txn: &TxnRequest) -> Result<()> {
    check_ops(&txn.success)?;
    check_ops(&txn.failure)?;
    Ok(())
}

/// The puts and deletes of one list of ops, for the parent list to check against its own.
struct Writes {
    puts: HashSet<Vec<u8>>,
    deletes: Vec<KeyRange>,
}

fn covered(deletes: &[KeyRange], key: &[u8]) -> bool {
    deletes.iter().any(|r| r.contains(key))
}

fn check_ops(ops: &[RequestOp]) -> Result<Writes> {
    let mut deletes: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(KeyRange::new(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts = HashSet::new();
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let then = check_ops(&nested.success)?;
        let otherwise = check_ops(&nested.failure)?;
        for key in &then.puts {
            if puts.contains(key) || covered(&deletes, key) {
                return Err(Refusal::DuplicateKey { key: key.clone() }.into());
            }
        }
        puts.extend(then.puts.iter().cloned());
        for key in otherwise.puts {
            let repeats_other_branch = then.puts.contains(&key);
            if (puts.contains(&key) && !repeats_other_branch) || covered(&deletes, &key) {
                return Err(Refusal::DuplicateKey { key }.into());
            }
            puts.insert(key);
        }
        deletes.extend(then.deletes);
        deletes.extend(otherwise.deletes);
    }
    for op in ops {
        let RequestOp::Put(put) = op else { continue };
        if puts.contains(&put.key) || covered(&deletes, &put.key) {
            return Err(Refusal::DuplicateKey {
                key: put.key.clone(),
            }
            .into());
        }
        puts.insert(put.key.clone());
    }
    Ok(Writes { puts, deletes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DeleteRangeRequest, PutRequest};
    use crate::Error;

    fn put(k: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: k.into(),
            ..Default::default()
        })
    }
    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: false,
        })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_are_rejected() {
        assert!(check_txn_keys(&txn(vec![put("a"), put("b")], vec![put("a")])).is_ok());
        assert!(matches!(
            check_txn_keys(&txn(vec![put("a"), put("a")], vec![])),
            Err(Error::Refused(Refusal::DuplicateKey { key })) if key == b"a"
        ));
        assert!(check_txn_keys(&txn(vec![put("b"), del("a", "c")], vec![])).is_err());
        assert!(check_txn_keys(&txn(vec![del("a", "c"), del("b", "")], vec![])).is_ok());
        assert!(check_txn_keys(&txn(vec![put("c"), del("a", "c")], vec![])).is_ok());
    }

    #[test]
    fn nested_branches_may_repeat_each_other() {
        let nested = RequestOp::Txn(txn(vec![put("x")], vec![put("x")]));
        assert!(check_txn_keys(&txn(vec![nested.clone()], vec![])).is_ok());
        assert!(check_txn_keys(&txn(vec![nested.clone(), put("x")], vec![])).is_err());
        let deleting = RequestOp::Txn(txn(vec![del("w", "z")], vec![]));
        assert!(check_txn_keys(&txn(vec![deleting, put("x")], vec![])).is_err());
        let twice = RequestOp::Txn(txn(vec![put("y")], vec![]));
        assert!(check_txn_keys(&txn(vec![twice.clone(), twice], vec![])).is_err());
    }
}
