//! Files as a source: NDJSON (one record per line) or length-delimited protobuf (`.pb` /
//! `.binpb`: each `rapport.v1.Event` after its length as a varint, the framing of protobuf's
//! `writeDelimitedTo`). Positions are byte offsets, so a killed run resumes exactly after the last
//! record it committed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{InputBatch, Poll, RecordMeta, Source, SourceError};

enum Input {
    Files(Vec<PathBuf>),
    Stdin,
}

/// How a file's records are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line.
    Ndjson,
    /// Length-delimited protobuf: a varint length, then that many bytes of `rapport.v1.Event`.
    Protobuf,
}

/// A file's format, from its extension: `.pb` and `.binpb` are length-delimited protobuf,
/// anything else NDJSON.
pub fn format_of(path: &Path) -> FileFormat {
    match path.extension().and_then(|x| x.to_str()) {
        Some("pb" | "binpb") => FileFormat::Protobuf,
        _ => FileFormat::Ndjson,
    }
}

/// Writes one record of a length-delimited protobuf file: its length as a varint, then the
/// record.
pub fn write_delimited(w: &mut impl std::io::Write, rec: &[u8]) -> std::io::Result<()> {
    let mut len = [0u8; 10];
    let mut at = &mut len[..];
    prost::encoding::encode_varint(rec.len() as u64, &mut at);
    let n = 10 - at.len();
    w.write_all(&len[..n])?;
    w.write_all(rec)
}

/// One record read from a file.
struct Taken {
    /// Bytes of the file it took, framing included.
    consumed: u64,
    /// Bytes of it kept in the batch (at most `max_record_bytes` + 1).
    kept: usize,
    /// The record's length without its framing.
    len: u64,
    /// False when the file ended inside the record.
    complete: bool,
}

pub struct FileSource {
    input: Input,
    keys: Vec<String>,
    formats: Vec<FileFormat>,
    positions: Vec<u64>,
    current: usize,
    reader: Option<Box<dyn BufRead + Send>>,
    follow: bool,
    max_record_bytes: usize,
    total_bytes: u64,
}

fn io_err(path: &Path, source: std::io::Error) -> SourceError {
    SourceError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The files an input names: the file itself, or a directory's `*.ndjson` / `*.jsonl` /
/// `*.json` / `*.pb` / `*.binpb` files in name order (an error when it has none or cannot be
/// read).
pub fn input_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        SourceError::Config(format!(
            "cannot read input {}: {e}. Pass an existing NDJSON or .pb file, a directory of them, or - for stdin.",
            path.display()
        ))
    })?;
    Ok(if meta.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("ndjson" | "jsonl" | "json" | "pb" | "binpb")
                )
            })
            .collect();
        v.sort();
        if v.is_empty() {
            return Err(SourceError::Config(format!(
                "the input directory {} holds no .ndjson, .jsonl, .json, .pb or .binpb files.",
                path.display()
            )));
        }
        v
    } else {
        vec![path.to_owned()]
    })
}

impl FileSource {
    /// `input`: a file, a directory (its event files in name order), or "-" (NDJSON on stdin).
    pub fn open(
        input: &str,
        follow: bool,
        max_record_bytes: usize,
    ) -> Result<FileSource, SourceError> {
        if input.is_empty() {
            return Err(SourceError::Config(
                "no input given: pass --input FILE|DIR|- or set embedded.input in the config."
                    .into(),
            ));
        }
        let (input, keys, formats) = if input == "-" {
            (Input::Stdin, vec!["stdin".to_owned()], vec![FileFormat::Ndjson])
        } else {
            let files = input_files(Path::new(input))?;
            let keys = files
                .iter()
                .map(|p| {
                    let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
                    format!("file:{}", abs.display())
                })
                .collect();
            let formats = files.iter().map(|p| format_of(p)).collect();
            (Input::Files(files), keys, formats)
        };
        let n = keys.len();
        let total_bytes = match &input {
            Input::Files(f) => f
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum(),
            Input::Stdin => 0,
        };
        Ok(FileSource {
            input,
            keys,
            formats,
            positions: vec![0; n],
            current: 0,
            reader: None,
            follow,
            max_record_bytes,
            total_bytes,
        })
    }

    fn open_current(&mut self) -> Result<bool, SourceError> {
        if self.reader.is_some() {
            return Ok(true);
        }
        match &self.input {
            Input::Stdin => {
                self.reader = Some(Box::new(BufReader::with_capacity(
                    1 << 20,
                    std::io::stdin(),
                )));
            }
            Input::Files(files) => {
                let Some(path) = files.get(self.current) else {
                    return Ok(false);
                };
                let mut f = File::open(path).map_err(|e| io_err(path, e))?;
                let len = f.metadata().map_err(|e| io_err(path, e))?.len();
                let pos = self.positions[self.current];
                if pos > len {
                    return Err(SourceError::Config(format!(
                        "input {} is shorter ({len} bytes) than the stored position ({pos}); it was replaced or truncated. Use a new --data-dir, or `rapport replay`, to start over.",
                        path.display()
                    )));
                }
                f.seek(SeekFrom::Start(pos)).map_err(|e| io_err(path, e))?;
                self.reader = Some(Box::new(BufReader::with_capacity(1 << 20, f)));
            }
        }
        Ok(true)
    }

    /// Whether any input file is length-delimited protobuf.
    pub fn reads_protobuf(&self) -> bool {
        self.formats.contains(&FileFormat::Protobuf)
    }

    /// Reads one line into `buf`, at most `max_record_bytes` + 1 of it (the rest is skipped).
    fn read_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Taken> {
        let limit = self.max_record_bytes;
        let reader = self.reader.as_mut().expect("open");
        let start = buf.len();
        let mut consumed = 0u64;
        loop {
            let avail = reader.fill_buf()?;
            if avail.is_empty() {
                let kept = buf.len() - start;
                return Ok(Taken { consumed, kept, len: consumed, complete: false });
            }
            let (chunk, found) = match memchr::memchr(b'\n', avail) {
                Some(i) => (&avail[..=i], true),
                None => (avail, false),
            };
            let room = (limit + 1).saturating_sub(buf.len() - start);
            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let n = chunk.len();
            consumed += n as u64;
            reader.consume(n);
            if found {
                let kept = buf.len() - start;
                return Ok(Taken { consumed, kept, len: consumed - 1, complete: true });
            }
        }
    }

    /// Reads one length-delimited record into `buf`, at most `max_record_bytes` + 1 of it (the
    /// rest is skipped). A length that is not a valid varint leaves nothing to resynchronise
    /// on: the rest of the file is then taken as one record (it goes to the dead letters).
    fn read_frame(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Taken> {
        let limit = self.max_record_bytes;
        let reader = self.reader.as_mut().expect("open");
        let start = buf.len();
        let mut consumed = 0u64;
        let mut len = 0u64;
        let mut header = [0u8; 10];
        loop {
            let Some(&b) = reader.fill_buf()?.first() else {
                // The file ends before (or inside) a length.
                buf.extend_from_slice(&header[..consumed as usize]);
                return Ok(Taken { consumed, kept: consumed as usize, len: consumed, complete: false });
            };
            reader.consume(1);
            header[consumed as usize] = b;
            len |= u64::from(b & 0x7f) << (7 * consumed);
            consumed += 1;
            if b & 0x80 == 0 && (consumed < 10 || b <= 1) {
                break;
            }
            if consumed == 10 {
                buf.extend_from_slice(&header);
                consumed += take(reader, buf, start, limit, u64::MAX)?;
                let kept = buf.len() - start;
                return Ok(Taken { consumed, kept, len: consumed, complete: true });
            }
        }
        let body = take(reader, buf, start, limit, len)?;
        consumed += body;
        Ok(Taken { consumed, kept: buf.len() - start, len: body, complete: body == len })
    }
}

/// Takes up to `want` bytes from `reader` (fewer where the file ends), appending them to `buf`
/// while the record that begins at `start` holds at most `limit` + 1 bytes (the rest is
/// skipped). Returns the bytes taken.
fn take<R: BufRead + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    start: usize,
    limit: usize,
    want: u64,
) -> std::io::Result<u64> {
    let mut taken = 0u64;
    while taken < want {
        let avail = reader.fill_buf()?;
        if avail.is_empty() {
            break;
        }
        let n = avail.len().min(usize::try_from(want - taken).unwrap_or(usize::MAX));
        let room = (limit + 1).saturating_sub(buf.len() - start);
        buf.extend_from_slice(&avail[..n.min(room)]);
        reader.consume(n);
        taken += n as u64;
    }
    Ok(taken)
}

impl Source for FileSource {
    fn sources(&self) -> &[String] {
        &self.keys
    }

    fn resume(&mut self, positions: &HashMap<String, u64>) -> Result<(), SourceError> {
        for (i, k) in self.keys.iter().enumerate() {
            self.positions[i] = positions.get(k).copied().unwrap_or(0);
        }
        if matches!(self.input, Input::Stdin) && self.positions[0] > 0 {
            // stdin cannot seek: skip what an earlier run committed.
            self.open_current()?;
            let skip = self.positions[0];
            let r = self.reader.as_mut().expect("open");
            std::io::copy(&mut r.take(skip), &mut std::io::sink())
                .map_err(|e| io_err(Path::new("stdin"), e))?;
        }
        self.reader = None;
        if matches!(self.input, Input::Stdin) {
            self.open_current()?;
        }
        Ok(())
    }

    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
        batch: &mut InputBatch,
    ) -> Result<Poll, SourceError> {
        let deadline = Instant::now() + wait;
        let mut added = 0;
        loop {
            if !self.open_current()? {
                return Ok(if added > 0 { Poll::Records } else { Poll::End });
            }
            while added < max {
                let start = batch.buf.len();
                let path = self.keys[self.current].clone();
                let format = self.formats[self.current];
                let read = match format {
                    FileFormat::Ndjson => self.read_line(&mut batch.buf),
                    FileFormat::Protobuf => self.read_frame(&mut batch.buf),
                }
                .map_err(|e| SourceError::Io { path, source: e })?;
                let Taken { consumed, kept, len, complete } = read;
                if consumed == 0 {
                    break;
                }
                let at_end_of_file = !complete;
                if at_end_of_file && self.follow {
                    // A followed file may still be writing this line: read it again, whole,
                    // from its start on a later poll.
                    batch.buf.truncate(start);
                    self.reader = None;
                    break;
                }
                let offset = self.positions[self.current];
                let next = offset + consumed;
                self.positions[self.current] = next;
                let oversized = (len > self.max_record_bytes as u64).then_some(len);
                let mut end = start + kept.min(len as usize).min(self.max_record_bytes);
                if format == FileFormat::Ndjson
                    && oversized.is_none()
                    && batch.buf[start..end].ends_with(b"\r")
                {
                    end -= 1;
                }
                batch.buf.truncate(end);
                batch.records.push(RecordMeta {
                    source: self.current as u32,
                    offset,
                    next,
                    start,
                    end,
                    partition: None,
                    oversized,
                });
                added += 1;
                if at_end_of_file {
                    break;
                }
            }
            if added >= max {
                return Ok(Poll::Records);
            }
            // End of the current file.
            match &self.input {
                Input::Files(files) if self.current + 1 < files.len() => {
                    self.current += 1;
                    self.reader = None;
                    continue;
                }
                _ => {}
            }
            if added > 0 {
                return Ok(Poll::Records);
            }
            if !self.follow {
                return Ok(Poll::End);
            }
            if Instant::now() >= deadline {
                return Ok(Poll::Idle);
            }
            // Following a file: nothing new yet. Re-open to see appended data.
            std::thread::sleep(Duration::from_millis(20).min(wait));
            if let Input::Files(_) = self.input {
                self.reader = None;
            }
        }
    }

    fn progress(&self) -> Option<(u64, u64)> {
        match &self.input {
            Input::Files(files) => {
                let done: u64 = (0..files.len()).map(|i| self.positions[i]).sum();
                Some((done, self.total_bytes))
            }
            Input::Stdin => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    fn delimited(records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            write_delimited(&mut out, r).unwrap();
        }
        out
    }

    /// Every record of `path`, polled `per_poll` at a time: (bytes kept, oversized length).
    fn read_all(path: &Path, per_poll: usize, max: usize) -> Vec<(Vec<u8>, Option<u64>)> {
        let mut src = FileSource::open(&path.display().to_string(), false, max).unwrap();
        src.resume(&HashMap::new()).unwrap();
        let mut got = Vec::new();
        loop {
            let mut b = InputBatch::default();
            let poll = src.poll(per_poll, Duration::ZERO, &mut b).unwrap();
            got.extend(b.records.iter().map(|r| (b.bytes(r).to_vec(), r.oversized)));
            if poll != Poll::Records {
                return got;
            }
        }
    }

    proptest! {
        /// Whatever the records (empty, binary, newlines inside, over the size limit) and however
        /// many are polled at once, a .pb file hands out each one, its first `max` bytes kept and
        /// an oversized one flagged with its length, and the positions end at the file's end.
        #[test]
        fn a_delimited_file_hands_out_every_record_as_written(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..40),
            per_poll in 1usize..50,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("events.pb");
            std::fs::write(&path, delimited(&records)).unwrap();
            let max = 256;
            let got = read_all(&path, per_poll, max);
            let want: Vec<(Vec<u8>, Option<u64>)> = records
                .iter()
                .map(|r| (r[..r.len().min(max)].to_vec(), (r.len() > max).then_some(r.len() as u64)))
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    /// `rapport generate --out FILE.pb` and the reader agree: the same events in the same order,
    /// the malformed records among them still there (and still refused by the decoder), and an
    /// embedded run on the two files raises the same outputs (`bench` checks that at scale).
    #[test]
    fn a_generated_pb_file_holds_the_same_events_as_its_ndjson_twin() {
        let p = crate::generate::Portfolio::new(crate::generate::GenSpec {
            accounts: 20,
            days: 10,
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let (json, pb) = (dir.path().join("e.ndjson"), dir.path().join("e.pb"));
        let (n, bad) = crate::app::write_portfolio(&p, &json, 13).unwrap();
        assert_eq!(crate::app::write_portfolio(&p, &pb, 13).unwrap(), (n, bad));
        assert!(bad > 0);
        let limits = crate::codec::DecodeLimits { max_record_bytes: 65536, max_id_bytes: 256 };
        let decode = |recs: Vec<(Vec<u8>, Option<u64>)>| -> Vec<Option<String>> {
            recs.iter()
                .map(|(r, _)| {
                    crate::codec::decode(r, &limits).ok().map(|ev| {
                        let mut out = Vec::new();
                        crate::codec::json::encode_event(&ev, &mut out);
                        String::from_utf8(out).unwrap()
                    })
                })
                .collect()
        };
        let from_json = decode(read_all(&json, 100, 65536));
        let from_pb = decode(read_all(&pb, 100, 65536));
        assert_eq!(from_json.len() as u64, n + bad);
        assert_eq!(from_pb.iter().filter(|e| e.is_some()).count() as u64, n);
        assert_eq!(from_pb, from_json);
    }

    proptest! {
        /// Any bytes at all in a .pb file: reading never fails or panics, and the records tile
        /// the file: each starts where the one before ended and the last ends at the file's
        /// end, so no byte is skipped unaccounted (whatever cannot be framed goes to the
        /// dead letters as a record).
        #[test]
        fn any_bytes_in_a_delimited_file_are_handed_out_as_records_that_tile_it(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            per_poll in 1usize..20,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("noise.pb");
            std::fs::write(&path, &bytes).unwrap();
            let mut src = FileSource::open(&path.display().to_string(), false, 64).unwrap();
            src.resume(&HashMap::new()).unwrap();
            let mut at = 0u64;
            loop {
                let mut b = InputBatch::default();
                let poll = src.poll(per_poll, Duration::ZERO, &mut b).unwrap();
                for r in &b.records {
                    prop_assert_eq!(r.offset, at);
                    prop_assert!(r.next > r.offset);
                    prop_assert!(r.end - r.start <= 64);
                    at = r.next;
                }
                if poll != Poll::Records {
                    break;
                }
            }
            prop_assert_eq!(at, bytes.len() as u64);
        }
    }

    #[test]
    fn a_truncated_or_unframeable_end_of_file_becomes_one_last_record() {
        let dir = tempfile::tempdir().unwrap();
        // The last record says 50 bytes and has 3.
        let path = dir.path().join("cut.pb");
        let mut bytes = delimited(&[b"abc".to_vec()]);
        bytes.extend_from_slice(&[50, b'x', b'y', b'z']);
        std::fs::write(&path, &bytes).unwrap();
        let got = read_all(&path, 10, 1000);
        assert_eq!(got, vec![(b"abc".to_vec(), None), (b"xyz".to_vec(), None)]);
        // A length of eleven continuation bytes is no varint: the rest is one record.
        let path = dir.path().join("bad.pb");
        let mut bytes = delimited(&[b"ok".to_vec()]);
        bytes.extend_from_slice(&[0xff; 11]);
        bytes.extend_from_slice(b"tail");
        std::fs::write(&path, &bytes).unwrap();
        let got = read_all(&path, 10, 1000);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, b"ok");
        assert_eq!(got[1].0.len(), 11 + 4);
    }

    #[test]
    fn a_followed_delimited_file_waits_for_a_record_still_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.pb");
        let whole = delimited(&[b"first".to_vec(), b"second".to_vec()]);
        let split = whole.len() - 3;
        std::fs::write(&path, &whole[..split]).unwrap();
        let mut src = FileSource::open(&path.display().to_string(), true, 1000).unwrap();
        src.resume(&HashMap::new()).unwrap();
        let mut b = InputBatch::default();
        src.poll(10, Duration::ZERO, &mut b).unwrap();
        assert_eq!(b.records.len(), 1);
        assert_eq!(b.bytes(&b.records[0]), b"first");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&whole[split..]).unwrap();
        let mut b = InputBatch::default();
        src.poll(10, Duration::ZERO, &mut b).unwrap();
        assert_eq!(b.records.len(), 1);
        assert_eq!(b.bytes(&b.records[0]), b"second");
        assert_eq!(b.records[0].next, whole.len() as u64);
    }

    #[test]
    fn a_delimited_file_resumes_after_the_last_committed_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.pb");
        let records: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; i as usize * 30]).collect();
        std::fs::write(&path, delimited(&records)).unwrap();
        let mut src = FileSource::open(&path.display().to_string(), false, 1000).unwrap();
        src.resume(&HashMap::new()).unwrap();
        let mut b = InputBatch::default();
        src.poll(4, Duration::ZERO, &mut b).unwrap();
        let next = b.records.last().unwrap().next;
        let key = src.sources()[0].clone();
        let mut again = FileSource::open(&path.display().to_string(), false, 1000).unwrap();
        again.resume(&HashMap::from([(key, next)])).unwrap();
        let mut b = InputBatch::default();
        again.poll(100, Duration::ZERO, &mut b).unwrap();
        let rest: Vec<Vec<u8>> = b.records.iter().map(|r| b.bytes(r).to_vec()).collect();
        assert_eq!(rest, records[4..].to_vec());
    }
}
