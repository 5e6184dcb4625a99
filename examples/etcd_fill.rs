//! Benchmark loader: fills etcd with `--mib` MiB of values (`--value-size` bytes each, 100 puts
//! per txn, `--parallel` txns in flight). Keys are `/bench/<n>`.
//!
//! usage: etcd_fill --endpoint http://127.0.0.1:2379 --mib 600 [--value-size 4096] [--parallel 8]

use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = arg("--endpoint", "http://127.0.0.1:2379");
    let mib: usize = arg("--mib", "600").parse()?;
    let size: usize = arg("--value-size", "4096").parse()?;
    let parallel: usize = arg("--parallel", "8").parse()?;
    let total = mib * 1024 * 1024 / size;
    let client = etcd_client::Client::connect([&endpoint], None).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..parallel {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            // pseudo-random values so that compression has real work to do
            let mut x: u64 = 0x9E3779B97F4A7C15 ^ w as u64;
            let mut i = w * 100;
            while i < total {
                let mut ops = Vec::with_capacity(100);
                for k in i..(i + 100).min(total) {
                    let v: Vec<u8> = (0..size)
                        .map(|j| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            // half random, half text: compressible roughly like real objects
                            if j % 2 == 0 {
                                (x & 0xff) as u8
                            } else {
                                b'a' + (j % 26) as u8
                            }
                        })
                        .collect();
                    ops.push(etcd_client::TxnOp::put(format!("/bench/{k:09}"), v, None));
                }
                c.txn(etcd_client::Txn::new().and_then(ops)).await?;
                i += 100 * parallel;
            }
            Ok::<(), etcd_client::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!(
        "put {total} keys of {size} bytes ({mib} MiB) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
