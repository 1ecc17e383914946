//! The disk buffer on real files: order, restarts, torn and corrupt frames, the size
//! limit.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use weir_engine::Message;

use super::frame::encode;
use super::*;

fn delivery(i: usize) -> Delivery {
    let mut m = Message::new(format!("plant/{i}"), format!("{{\"i\":{i}}}"));
    m.client_id = Some("dev-1".to_owned());
    Delivery {
        payload: Bytes::from(format!("{{\"out\":{i}}}")),
        params: Arc::new(vec![Some(format!("p{i}")), None]),
        source: Arc::new(m),
    }
}

#[tokio::test]
async fn outputs_come_back_in_order_with_everything_they_carried() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
    let ds: Vec<Delivery> = (0..10).map(delivery).collect();
    let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 42)).collect();
    assert_eq!(s.append(&items).await.unwrap(), 10);
    assert_eq!(s.len(), 10);
    let head = s.peek(3).await.unwrap();
    assert_eq!(head.len(), 3);
    assert_eq!(head[0].delivery.payload, ds[0].payload);
    assert_eq!(head[2].delivery.params, ds[2].params);
    assert_eq!(head[1].delivery.source.topic, "plant/1");
    assert_eq!(head[1].delivery.source.client_id.as_deref(), Some("dev-1"));
    assert_eq!(head[1].buffered_at_ms, 42);
    s.pop(3).await.unwrap();
    let next = s.peek(100).await.unwrap();
    assert_eq!(next.len(), 7);
    assert_eq!(next[0].delivery.payload, ds[3].payload);
    s.pop(7).await.unwrap();
    assert!(s.is_empty());
    assert_eq!(s.bytes(), 0);
    // The consumed segment is gone.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[tokio::test]
async fn a_restart_adopts_what_was_left_and_cuts_a_torn_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    let ds: Vec<Delivery> = (0..5).map(delivery).collect();
    let seg_path;
    {
        let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
        let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 7)).collect();
        s.append(&items).await.unwrap();
        s.peek(2).await.unwrap();
        s.pop(2).await.unwrap();
        seg_path = s.segments[0].path.clone();
        s.release();
    }
    // A crash in the middle of an append leaves half a frame.
    let mut data = std::fs::read(&seg_path).unwrap();
    data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&seg_path, &data).unwrap();

    let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
    assert_eq!(s.len(), 3);
    let rest = s.peek(10).await.unwrap();
    let got: Vec<&Bytes> = rest.iter().map(|r| &r.delivery.payload).collect();
    assert_eq!(got, vec![&ds[2].payload, &ds[3].payload, &ds[4].payload]);
    // New outputs go behind the adopted ones.
    let extra = delivery(99);
    s.append(&[(&extra, 8)]).await.unwrap();
    s.pop(3).await.unwrap();
    let last = s.peek(10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].delivery.payload, extra.payload);
}

/// A damaged stretch inside a segment (a flipped bit, a zeroed block) loses only the
/// outputs in it: it is reported and counted, its bytes are kept aside, and the outputs
/// before and after it are delivered in order.
#[tokio::test]
async fn a_corrupt_frame_loses_only_itself_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    let ds: Vec<Delivery> = (0..6).map(delivery).collect();
    let one = encode(&ds[0], 7).len();
    let seg_path;
    {
        let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
        let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 7)).collect();
        s.append(&items).await.unwrap();
        s.peek(1).await.unwrap();
        s.pop(1).await.unwrap();
        seg_path = s.segments[0].path.clone();
        s.release();
    }
    // Damage the body of output 2 (a bit flip) and the length of output 4.
    let mut data = std::fs::read(&seg_path).unwrap();
    data[2 * one + 12] ^= 0x40;
    data[4 * one] = 0xff;
    std::fs::write(&seg_path, &data).unwrap();

    let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
    assert_eq!(s.corrupt_regions(), 2);
    assert_eq!(s.len(), 3);
    let rest = s.peek(10).await.unwrap();
    let got: Vec<&Bytes> = rest.iter().map(|r| &r.delivery.payload).collect();
    assert_eq!(got, vec![&ds[1].payload, &ds[3].payload, &ds[5].payload]);
    let mut aside = seg_path.as_os_str().to_owned();
    aside.push(".corrupt");
    assert_eq!(std::fs::read(PathBuf::from(aside)).unwrap().len(), 2 * one);
    s.pop(3).await.unwrap();
    assert!(s.is_empty());
    // The repaired segment is clean: a later start finds nothing wrong.
    s.release();
    let s = DiskBuffer::open(dir, 1 << 30).await.unwrap();
    assert_eq!((s.corrupt_regions(), s.len()), (0, 0));
}

/// A stretch of frame headers that each claim a large body cannot make the search for
/// the next whole frame take the square of the file's size: past a bound the rest of
/// the segment is reported as corrupt.
#[tokio::test]
async fn a_hostile_segment_is_searched_within_a_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    std::fs::create_dir_all(&dir).unwrap();
    let first = encode(&delivery(1), 7);
    let mut data = first.clone();
    // 1 MiB of headers claiming 512 KiB bodies, then a whole frame.
    for _ in 0..(1 << 18) {
        data.extend_from_slice(&[0x00, 0x00, 0x08, 0x00]);
    }
    data.extend_from_slice(&encode(&delivery(2), 7));
    std::fs::write(dir.join("old-000001.seg"), &data).unwrap();
    let started = std::time::Instant::now();
    let mut s = DiskBuffer::open(dir.clone(), 1 << 30).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.corrupt_regions(), 1);
    let kept = s.peek(10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].delivery.payload, delivery(1).payload);
    let aside = std::fs::read(dir.join("old-000001.seg.corrupt")).unwrap();
    assert_eq!(aside.len(), data.len() - first.len());
}

#[tokio::test]
async fn the_size_limit_refuses_what_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("buffer");
    let one = encode(&delivery(1), 0).len() as u64;
    let mut s = DiskBuffer::open(dir, one * 3).await.unwrap();
    let ds: Vec<Delivery> = (0..5).map(delivery).collect();
    let items: Vec<(&Delivery, i64)> = ds.iter().map(|d| (d, 0)).collect();
    assert_eq!(s.append(&items).await.unwrap(), 3);
    assert_eq!(s.append(&items[3..]).await.unwrap(), 0);
    assert_eq!(s.bytes(), one * 3);
}
