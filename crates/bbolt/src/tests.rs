//! The writer against the reader, the reader against a file etcd 3.4 wrote, damaged input.

use std::io::{Seek, SeekFrom, Write};
use std::ops::ControlFlow;

use proptest::prelude::*;

use super::*;

type Buckets = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;

/// Writes `buckets` to a file the seekable way; the file and its plan.
fn write_file(buckets: &Buckets, page_size: u32) -> (File, Plan) {
    let file = tempfile::tempfile().unwrap();
    let mut w = Writer::new(io::BufWriter::new(file), page_size, None).unwrap();
    for (name, entries) in buckets {
        w.begin_bucket(name).unwrap();
        for (k, v) in entries {
            w.put(k, v).unwrap();
        }
    }
    let (out, plan) = w.finish().unwrap();
    let mut file = out.into_inner().unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(&meta_pages(plan, page_size)).unwrap();
    (file, plan)
}

/// Writes `buckets` the streaming way (two passes) into memory.
fn write_streamed(buckets: &Buckets, page_size: u32) -> Vec<u8> {
    let pass = |plan: Option<Plan>, out: Vec<u8>| {
        let mut w = Writer::new(out, page_size, plan).unwrap();
        for (name, entries) in buckets {
            w.begin_bucket(name).unwrap();
            for (k, v) in entries {
                w.put(k, v).unwrap();
            }
        }
        w.finish().unwrap()
    };
    let (_, plan) = pass(None, Vec::new());
    let (bytes, again) = pass(Some(plan), Vec::new());
    assert_eq!(plan, again);
    bytes
}

fn read_all(file: File, size: u64) -> Result<Buckets> {
    let reader = Reader::open(file, size)?;
    let mut names = Vec::new();
    let _ = reader.walk::<Error>(&reader.root(), &mut |e| {
        names.push((e.key.to_vec(), e.bucket));
        Ok(ControlFlow::Continue(()))
    })?;
    let mut out = Vec::new();
    for (name, bucket) in names {
        let bucket = bucket.ok_or_else(|| corrupt("a top-level entry is not a bucket"))?;
        let mut entries = Vec::new();
        let _ = reader.walk::<Error>(&bucket, &mut |e| {
            entries.push((e.key.to_vec(), e.value.to_vec()));
            Ok(ControlFlow::Continue(()))
        })?;
        out.push((name, entries));
    }
    Ok(out)
}

fn file_of(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn sample(keys: usize, value_len: usize) -> Buckets {
    vec![
        (b"alarm".to_vec(), vec![]),
        (
            b"key".to_vec(),
            (0..keys)
                .map(|i| {
                    (
                        format!("{i:012}").into_bytes(),
                        vec![(i % 251) as u8; value_len + i % 7],
                    )
                })
                .collect(),
        ),
        (b"meta".to_vec(), vec![(b"m".to_vec(), b"v".to_vec())]),
    ]
}

#[test]
fn what_is_written_reads_back_small_and_with_branch_levels() {
    for keys in [0, 1, 3, 1000, 50_000] {
        let buckets = sample(keys, 20);
        let (file, plan) = write_file(&buckets, 4096);
        let size = plan.high_water * 4096;
        assert_eq!(file.metadata().unwrap().len(), size);
        assert_eq!(read_all(file, size).unwrap(), buckets, "{keys} keys");
    }
}

#[test]
fn values_larger_than_a_page_overflow_and_read_back() {
    let buckets = sample(40, 10_000);
    let (file, plan) = write_file(&buckets, 4096);
    assert_eq!(read_all(file, plan.high_water * 4096).unwrap(), buckets);
}

#[test]
fn the_streamed_file_equals_the_seeked_one() {
    let buckets = sample(5000, 100);
    let streamed = write_streamed(&buckets, 4096);
    let (mut file, plan) = write_file(&buckets, 4096);
    let mut seeked = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    io::Read::read_to_end(&mut file, &mut seeked).unwrap();
    assert_eq!(streamed, seeked);
    assert_eq!(streamed.len() as u64, plan.high_water * 4096);
}

#[test]
fn a_changed_second_pass_is_refused() {
    let buckets = sample(1000, 10);
    let (_, plan) = {
        let mut w = Writer::new(Vec::new(), 4096, None).unwrap();
        for (name, entries) in &buckets {
            w.begin_bucket(name).unwrap();
            for (k, v) in entries {
                w.put(k, v).unwrap();
            }
        }
        w.finish().unwrap()
    };
    let mut w = Writer::new(Vec::new(), 4096, Some(plan)).unwrap();
    w.begin_bucket(b"key").unwrap();
    w.put(b"only", b"one").unwrap();
    assert!(matches!(w.finish(), Err(Error::Invalid(_))));
}

#[test]
fn keys_and_buckets_out_of_order_are_refused() {
    let mut w = Writer::new(Vec::new(), 4096, None).unwrap();
    w.begin_bucket(b"b").unwrap();
    w.put(b"2", b"").unwrap();
    assert!(matches!(w.put(b"1", b""), Err(Error::Invalid(_))));
    assert!(matches!(w.put(b"2", b""), Err(Error::Invalid(_))));
    assert!(matches!(w.begin_bucket(b"a"), Err(Error::Invalid(_))));
    assert!(matches!(
        Writer::new(Vec::new(), 3000, None),
        Err(Error::Invalid(_))
    ));
}

/// A snapshot `etcdctl snapshot save` took from etcd 3.4.23 (puts, a delete, a two-put txn, a
/// lease, compaction at 4): inline buckets, old pages left behind, the sha256 after the pages.
#[test]
fn reads_a_snapshot_etcd_wrote() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/etcd-3.4.23-snapshot.db"
    );
    let file = File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    assert_eq!(size % 4096, 32, "pages, then the sha256");
    let all = read_all(file, size).unwrap();
    let names: Vec<&[u8]> = all.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(
        names,
        [
            &b"alarm"[..],
            b"auth",
            b"authRoles",
            b"authUsers",
            b"cluster",
            b"key",
            b"lease",
            b"members",
            b"members_removed",
            b"meta"
        ]
    );
    let keys = &all[5].1;
    assert_eq!(keys.len(), 7);
    // Revision 6 deleted b: a tombstone's key ends in 't'.
    assert_eq!(keys[3].0.len(), 18);
    assert_eq!(keys[3].0[17], b't');
    assert_eq!(&keys[3].0[..8], &6u64.to_be_bytes());
    let total: usize = all.iter().map(|(_, e)| e.len()).sum();
    assert_eq!(total, 14, "etcdctl snapshot status says totalKey 14");
}

#[test]
fn short_and_empty_files_are_refused() {
    assert!(matches!(
        Reader::open(file_of(&[]), 0),
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        Reader::open(file_of(&[0u8; 8192]), 8192),
        Err(Error::Corrupt(_))
    ));
    let buckets = sample(2000, 30);
    let bytes = write_streamed(&buckets, 4096);
    let cut = bytes.len() - 4096;
    assert!(matches!(
        Reader::open(file_of(&bytes[..cut]), cut as u64),
        Err(Error::Corrupt(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_sorted_content_reads_back(
        entries in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..40),
            proptest::collection::vec(any::<u8>(), 0..3000),
            0..300,
        ),
        page_size in prop_oneof![Just(1024u32), Just(4096u32)],
    ) {
        let buckets: Buckets = vec![(b"k".to_vec(), entries.into_iter().collect())];
        let bytes = write_streamed(&buckets, page_size);
        let got = read_all(file_of(&bytes), bytes.len() as u64).unwrap();
        prop_assert_eq!(got, buckets);
    }

    /// Damage anywhere gives an error or other content, never a panic or a hang.
    #[test]
    fn damaged_files_do_not_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..20),
    ) {
        let mut bytes = write_streamed(&sample(800, 40), 4096);
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= byte | 1;
        }
        let _ = read_all(file_of(&bytes), bytes.len() as u64);
    }
}
