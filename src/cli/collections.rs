//! `herald collections list|import|export`: the collections' routes driven from the command line. An import
//! reads the file one document at a time and sends batches of at most `--batch-bytes`, so memory holds two
//! batches whatever the file's size; each batch is stored atomically and the report says which were.

use std::io::Write as _;

use anyhow::{Context, bail};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

use super::{Remote, percent_encode};
use crate::CollectionsCommand;

pub async fn run(command: CollectionsCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match command {
        CollectionsCommand::List { remote } => {
            let body = get(&client, &remote, "/api/collections").await?;
            for c in body["collections"].as_array().into_iter().flatten() {
                println!(
                    "{}\tchannel={}\tpath={}\tdocuments={}",
                    c["name"].as_str().unwrap_or_default(),
                    c["channel"].as_str().unwrap_or_default(),
                    c["path"].as_str().unwrap_or("-"),
                    c["documents"]
                );
            }
            Ok(())
        }
        CollectionsCommand::Export { name, remote } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut after: Option<String> = None;
            let mut first = true;
            write!(out, "[")?;
            loop {
                let mut path = format!("/api/collections/{}?limit=1000", percent_encode(&name));
                if let Some(a) = &after {
                    path.push_str(&format!("&after={}", percent_encode(a)));
                }
                let page = get(&client, &remote, &path).await?;
                for d in page["documents"].as_array().into_iter().flatten() {
                    if !first {
                        write!(out, ",")?;
                    }
                    first = false;
                    write!(out, "\n{d}")?;
                }
                match page["next"].as_str() {
                    Some(n) => after = Some(n.to_owned()),
                    None => break,
                }
            }
            writeln!(out, "\n]")?;
            Ok(())
        }
        CollectionsCommand::Import {
            name,
            file,
            batch_bytes,
            remote,
        } => import(&client, &remote, &name, file, batch_bytes.max(1)).await,
    }
}

async fn get(client: &reqwest::Client, remote: &Remote, path: &str) -> anyhow::Result<Value> {
    let resp = remote
        .request(client, reqwest::Method::GET, path)
        .send()
        .await
        .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .context("the server's answer is not JSON")?;
    if !status.is_success() {
        bail!("{path} failed ({status}): {body}");
    }
    Ok(body)
}

/// One batch: its documents as one JSON array, and how many.
struct Batch {
    json: String,
    count: usize,
}

async fn import(
    client: &reqwest::Client,
    remote: &Remote,
    name: &str,
    file: std::path::PathBuf,
    batch_bytes: usize,
) -> anyhow::Result<()> {
    // The parser runs on its own thread and hands over one batch at a time (at most one waits).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Batch>>(1);
    let reader = std::thread::spawn(move || {
        let result = read_batches(&file, batch_bytes, &tx);
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let path = format!("/api/collections/{}/import", percent_encode(name));
    let (mut stored, mut created, mut replaced, mut batches) = (0usize, 0u64, 0u64, 0usize);
    while let Some(batch) = rx.recv().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let _ = reader.join();
                bail!(
                    "{e:#}\n{stored} documents were stored before it (in {batches} batches); none after"
                );
            }
        };
        let resp = remote
            .request(client, reqwest::Method::POST, &path)
            .header("content-type", "application/json")
            .body(batch.json)
            .send()
            .await
            .with_context(|| format!("cannot reach Herald at {}", remote.url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "batch {} (documents {} to {}) was refused ({status}): {body}\n{stored} documents before it are stored; none from it on",
                batches + 1,
                stored,
                stored + batch.count - 1
            );
        }
        stored += batch.count;
        batches += 1;
        created += body["created"].as_u64().unwrap_or(0);
        replaced += body["replaced"].as_u64().unwrap_or(0);
    }
    let _ = reader.join();
    println!(
        "{{\"collection\":{},\"documents\":{stored},\"created\":{created},\"replaced\":{replaced},\"batches\":{batches}}}",
        Value::String(name.to_owned())
    );
    Ok(())
}

fn read_batches(
    file: &std::path::Path,
    batch_bytes: usize,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
) -> anyhow::Result<()> {
    let input: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        )
    };
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(input));
    Batches { batch_bytes, tx }
        .deserialize(&mut de)
        .with_context(|| format!("{} is not a JSON array of documents", file.display()))?;
    de.end()
        .with_context(|| format!("{}: text after the array", file.display()))?;
    Ok(())
}

struct Batches<'a> {
    batch_bytes: usize,
    tx: &'a tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
}

impl<'de> DeserializeSeed<'de> for Batches<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Batches<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of documents")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut batch = Batch {
            json: String::from("["),
            count: 0,
        };
        let send = |b: Batch| {
            let mut b = b;
            b.json.push(']');
            self.tx.blocking_send(Ok(b)).is_ok()
        };
        while let Some(doc) = seq.next_element::<Box<serde_json::value::RawValue>>()? {
            if batch.count > 0 && batch.json.len() + doc.get().len() > self.batch_bytes {
                let full = std::mem::replace(
                    &mut batch,
                    Batch {
                        json: String::from("["),
                        count: 0,
                    },
                );
                if !send(full) {
                    return Ok(());
                }
            }
            if batch.count > 0 {
                batch.json.push(',');
            }
            batch.json.push_str(doc.get());
            batch.count += 1;
        }
        if batch.count > 0 {
            send(batch);
        }
        Ok(())
    }
}
