//! `--device`: on a build with the `gpu` feature, the commands on the device here
//! (in CI: lavapipe, Mesa's software Vulkan device) against the same commands on
//! the CPU; on a build without it, a clear refusal. Without a device each GPU test
//! says it skipped, unless `BDH_REQUIRE_GPU=1` (CI), where that fails.

mod common;

#[cfg(not(feature = "gpu"))]
#[test]
fn without_the_gpu_feature_a_gpu_is_refused_and_auto_stays_on_the_cpu() {
    common::skipped(
        "GPU tests (bdh-gpu's and the CLI's --device gpu)",
        "this build has no GPU backend: `cargo test --locked -p bdh-gpu -p bdh-cli --features \
         bdh-gpu/gpu,bdh-cli/gpu --test twins --test device --test training --test serving --test gpt --test gpu` runs them (CI does, on \
         lavapipe)",
    );
    use common::{bdh, golden, text};
    let model = golden("ref-tiny");
    let expected = golden("ref-tiny/expected.safetensors");
    let o = bdh(&["verify", "--model", &model, "--golden", &expected, "--device", "gpu"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("built without the GPU backend") && text(&o).contains("--features gpu"), "{}", text(&o));
    let o = bdh(&["verify", "--model", &model, "--golden", &expected, "--device", "auto"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("note: running on the CPU"), "{}", text(&o));
    let tmp = common::temp("train-no-gpu");
    let out = tmp.path().join("run");
    let train = |device: &str| {
        let sets = ["--set", "training.max_steps=2", "--set", "training.eval_interval=2"];
        let args = ["train", "--preset", "tiny", "--quiet", "--out", out.to_str().unwrap(), "--device", device];
        bdh(&[&args[..], &sets[..]].concat())
    };
    let o = train("gpu");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("built without the GPU backend"), "{}", text(&o));
    let o = train("auto");
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("note: training on the CPU"), "{}", text(&o));
}

#[cfg(feature = "gpu")]
mod on_a_device {
    use super::common::{self, bdh, golden, temp, text};
    use std::process::{Command, Output};

    /// Whether a device is here; if not (and none is required), says the test skipped.
    fn device_here(test: &str) -> bool {
        let o = bdh(&[
            "verify",
            "--model",
            &golden("ref-tiny"),
            "--golden",
            &golden("ref-tiny/expected.safetensors"),
            "--device",
            "gpu",
        ]);
        if o.status.success() {
            return true;
        }
        assert_ne!(std::env::var("BDH_REQUIRE_GPU").as_deref(), Ok("1"), "BDH_REQUIRE_GPU=1: {}", text(&o));
        assert!(text(&o).contains("no GPU found"), "{}", text(&o));
        common::skipped(test, "no GPU or Vulkan device (Debian and Ubuntu: apt-get install mesa-vulkan-drivers)");
        false
    }

    #[test]
    fn verify_on_the_device_passes_on_every_golden() {
        if !device_here("bdh verify --device gpu") {
            return;
        }
        for fixture in ["ref-tiny", "ref-small-trained", "gpt-tiny", "gpt-small-trained"] {
            let golden_file = golden(&format!("{fixture}/expected.safetensors"));
            let o = bdh(&["verify", "--model", &golden(fixture), "--golden", &golden_file, "--device", "gpu"]);
            println!("{}", text(&o));
            assert!(o.status.success(), "{fixture}: {}", text(&o));
            assert!(text(&o).contains("on the GPU") && text(&o).contains("PASS"), "{}", text(&o));
            assert!(!text(&o).contains("XDG_RUNTIME_DIR"), "driver noise: {}", text(&o));
        }
    }

    #[test]
    fn generation_on_the_device_prints_the_cpus_text_and_saves_a_state_the_cpu_continues() {
        if !device_here("bdh generate --device gpu") {
            return;
        }
        let dir = temp("gpu-generate");
        let state = dir.path().join("after.state");
        let state = state.to_str().unwrap();
        let model = golden("ref-small-trained");
        let run = |device: &str, extra: &[&str]| {
            let mut args = vec!["generate", "--model", &model[..], "--prompt", "ROMEO:"];
            args.extend(["--temperature", "0", "--device", device]);
            args.extend(extra);
            bdh(&args)
        };
        let same_text = |cpu: &Output, gpu: &Output| {
            assert!(cpu.status.success() && gpu.status.success(), "{}{}", text(cpu), text(gpu));
            assert_eq!(String::from_utf8_lossy(&gpu.stdout), String::from_utf8_lossy(&cpu.stdout));
        };
        same_text(&run("cpu", &["--max-tokens", "100"]), &run("gpu", &["--max-tokens", "100", "--save-state", state]));
        // The CPU continues the device's state as it would its own.
        let more = |device: &str| run(device, &["--load-state", state, "--no-echo", "--max-tokens", "40"]);
        let (cpu, gpu) = (more("cpu"), more("gpu"));
        same_text(&cpu, &gpu);
        assert!(text(&cpu).contains("at position 152"), "{}", text(&cpu));
    }

    #[test]
    fn eval_on_the_device_gives_the_cpus_loss() {
        if !device_here("bdh eval --device gpu") {
            return;
        }
        let dir = temp("gpu-eval");
        let file = dir.path().join("text.txt");
        std::fs::write(
            &file,
            "Now is the winter of our discontent made glorious summer by this sun of York. ".repeat(20),
        )
        .unwrap();
        let loss = |device: &str| -> f64 {
            let args =
                ["eval", "--model", &golden("ref-small-trained"), "--data", file.to_str().unwrap(), "--json", "-"];
            let o = bdh(&[&args[..], &["--block", "128", "--device", device]].concat());
            assert!(o.status.success(), "{}", text(&o));
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["loss"].as_f64().unwrap()
        };
        let (cpu, gpu) = (loss("cpu"), loss("gpu"));
        println!("eval loss: CPU {cpu:.6}, GPU {gpu:.6}");
        assert!((gpu - cpu).abs() / cpu < 1e-4, "CPU {cpu}, GPU {gpu}");
        // The built-in corpus's answers score the same too.
        let acc = |device: &str| -> serde_json::Value {
            let o = bdh(&[
                "eval",
                "--model",
                &golden("recall-trained"),
                "--batches",
                "2",
                "--json",
                "-",
                "--device",
                device,
            ]);
            assert!(o.status.success(), "{}", text(&o));
            serde_json::from_slice(&o.stdout).unwrap()
        };
        let (cpu, gpu) = (acc("cpu"), acc("gpu"));
        assert_eq!(gpu["answers"], cpu["answers"]);
        let (a, b) = (gpu["val_loss"].as_f64().unwrap(), cpu["val_loss"].as_f64().unwrap());
        assert!((a - b).abs() / b < 1e-4, "{a} {b}");
    }

    #[test]
    fn bench_runs_on_the_device_and_cpu_only_work_says_so() {
        if !device_here("bdh bench --device gpu") {
            return;
        }
        let o = bdh(&["bench", "forward", "--preset", "tiny", "--iters", "2", "--warmup", "1", "--device", "gpu"]);
        assert!(o.status.success() && text(&o).contains("forward on the GPU"), "{}", text(&o));
        let o = bdh(&["bench", "generate", "--preset", "tiny", "--tokens", "16", "--device", "gpu"]);
        assert!(o.status.success() && text(&o).contains("device memory held"), "{}", text(&o));
        let streams = ["bench", "generate", "--preset", "tiny", "--tokens", "8", "--streams", "4", "--device", "gpu"];
        let o = bdh(&streams);
        assert!(o.status.success() && text(&o).contains("tokens/s in all"), "{}", text(&o));
        assert!(text(&o).contains("device memory held"), "{}", text(&o));
        let o = bdh(&["bench", "train", "--preset", "tiny", "--iters", "2", "--warmup", "1", "--device", "gpu"]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("train step on the device") && text(&o).contains("device memory held"),
            "{}",
            text(&o)
        );
        let o = bdh(&[
            "eval",
            "--model",
            &golden("ref-tiny"),
            "--data",
            &golden("ref-tiny/config.json"),
            "--carry",
            "--device",
            "gpu",
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("--carry runs on the CPU only"), "{}", text(&o));
    }

    /// The training losses of a run directory's metrics log, in order.
    fn losses(run: &std::path::Path) -> Vec<f64> {
        let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let records = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        records.filter_map(|r| r.get("loss").and_then(|l| l.as_f64())).collect()
    }

    #[test]
    fn training_on_the_device_follows_the_cpus_curve_is_stopped_like_it_and_resumes_on_the_cpu() {
        if !device_here("bdh train --device gpu") {
            return;
        }
        let tmp = temp("train-gpu");
        let (cpu, gpu) = (tmp.path().join("cpu"), tmp.path().join("gpu"));
        let sets = ["training.max_steps=6", "training.eval_interval=3", "model.dropout=0.1", "training.block_size=32"];
        let train = |out: &std::path::Path, device: &str, steps: Option<&str>| {
            let mut args = vec!["train", "--quiet", "--device", device];
            match steps {
                None => args.extend(["--preset", "tiny", "--out", out.to_str().unwrap()]),
                Some(s) => args.extend(["--resume", out.to_str().unwrap(), "--set", s]),
            }
            let sets = if steps.is_none() { &sets[..] } else { &[] };
            sets.iter().for_each(|s| args.extend(["--set", s]));
            bdh(&args)
        };
        let o = train(&cpu, "cpu", None);
        assert!(o.status.success(), "{}", text(&o));
        let o = train(&gpu, "gpu", None);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("training on the GPU (Vulkan"), "{}", text(&o));
        let (a, b) = (losses(&gpu), losses(&cpu));
        assert_eq!(a.len(), 6);
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() / y < 1e-3), "{a:?} vs {b:?}");
        // The same run goes on on the CPU, and on the device again.
        let o = train(&gpu, "cpu", Some("training.max_steps=8"));
        assert!(o.status.success(), "{}", text(&o));
        let o = train(&gpu, "gpu", Some("training.max_steps=10"));
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(losses(&gpu).len(), 10);

        // SIGTERM mid-run on the device: the state is brought back and saved, as on the CPU.
        let stopped = tmp.path().join("stopped");
        let args = ["train", "--preset", "tiny", "--quiet", "--device", "gpu", "--out", stopped.to_str().unwrap()];
        let mut child = Command::new(env!("CARGO_BIN_EXE_bdh"))
            .args(args)
            .args(["--set", "training.max_steps=100000", "--set", "training.eval_interval=100000"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(stopped.join("metrics.jsonl")).is_ok_and(|t| t.lines().count() >= 3) {
            assert!(started.elapsed().as_secs() < 120, "no steps logged");
            assert!(child.try_wait().unwrap().is_none(), "the run ended");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(143), "{status}");
        let saved = std::fs::read_to_string(stopped.join("last/trainer.json")).unwrap();
        let step = serde_json::from_str::<serde_json::Value>(&saved).unwrap()["state"]["step"].as_u64().unwrap();
        assert!(step >= 2, "{saved}");
        let o = train(&stopped, "cpu", Some(&format!("training.max_steps={}", step + 1)));
        assert!(o.status.success(), "{}", text(&o));

        // The GPT baseline trains there too; with dropout it is refused on `gpu`,
        // and `auto` stays on the CPU.
        let gpt = |device: &str, dropout: &str| {
            let out = tmp.path().join(format!("gpt-{device}-{dropout}"));
            let args = ["train", "--preset", "gpt-tiny", "--quiet", "--device", device, "--out", out.to_str().unwrap()];
            let sets = ["--set", "training.max_steps=2", "--set", "training.eval_interval=2", "--set"];
            bdh(&[&args[..], &sets[..], &[&format!("model.dropout={dropout}")]].concat())
        };
        let o = gpt("gpu", "0");
        assert!(o.status.success() && text(&o).contains("training on the GPU"), "{}", text(&o));
        let o = gpt("gpu", "0.1");
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("a GPT with dropout trains on the CPU"), "{}", text(&o));
        let o = gpt("auto", "0.1");
        assert!(o.status.success() && text(&o).contains("note: training on the CPU"), "{}", text(&o));
    }

    /// `bdh` with `env` set and `unset` removed.
    fn bdh_env(args: &[&str], env: &[(&str, &str)], unset: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bdh"));
        c.args(args).envs(env.iter().copied());
        for k in unset {
            c.env_remove(k);
        }
        c.output().expect("bdh runs")
    }

    #[test]
    fn no_driver_is_a_clear_error_and_no_driver_writes_noise() {
        let args = [
            "verify",
            "--model",
            &golden("ref-tiny"),
            "--golden",
            &golden("ref-tiny/expected.safetensors"),
            "--device",
            "gpu",
        ];
        // CUDA alone: where no NVIDIA driver is installed, an error naming it.
        let o = bdh_env(&args, &[("BDH_GPU_BACKEND", "cuda")], &[]);
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
        if !o.status.success() {
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            assert!(text(&o).contains("Tried CUDA:") && text(&o).contains("libcuda"), "{}", text(&o));
        }
        // A training run refused for want of a device leaves no run directory behind.
        let tmp = temp("train-no-cuda");
        let out = tmp.path().join("run");
        let train = ["train", "--preset", "tiny", "--quiet", "--device", "gpu", "--out", out.to_str().unwrap()];
        let o = bdh_env(&train, &[("BDH_GPU_BACKEND", "cuda")], &[]);
        if !o.status.success() {
            assert_eq!(o.status.code(), Some(2), "{}", text(&o));
            assert!(text(&o).contains("no GPU found") && text(&o).contains("BDH_GPU_BACKEND=cuda"), "{}", text(&o));
            assert!(!out.exists(), "a run directory was made");
        }
        let o = bdh_env(&args, &[("BDH_GPU_BACKEND", "metal")], &[]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("BDH_GPU_BACKEND=metal: expected `cuda` or `vulkan`"), "{}", text(&o));
        // Without XDG_RUNTIME_DIR (a container, a cron job), the Vulkan driver stays quiet.
        let o = bdh_env(&args, &[], &["XDG_RUNTIME_DIR"]);
        assert!(!text(&o).contains("XDG_RUNTIME_DIR"), "{}", text(&o));
        let o = bdh_env(&args, &[("XDG_RUNTIME_DIR", "/nonexistent/run")], &[]);
        assert!(!text(&o).contains("XDG_RUNTIME_DIR"), "{}", text(&o));
    }

    /// A `bdh serve` on a free port, killed when dropped.
    struct Served {
        child: std::process::Child,
        base: String,
        agent: ureq::Agent,
    }

    impl Served {
        fn start(args: &[&str]) -> Served {
            use std::io::BufRead;
            let mut child = Command::new(env!("CARGO_BIN_EXE_bdh"))
                .args(["serve", "--model", &golden("ref-small-trained"), "--port", "0", "--quiet"])
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(300)))
                .build();
            Served { child, base, agent: ureq::Agent::new_with_config(config) }
        }

        fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
            let mut r = self.agent.post(format!("{}{path}", self.base)).send(body.to_string()).unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            assert_eq!(status, 200, "{path}: {v}");
            v
        }

        /// A greedy completion's text.
        fn greedy(&self, prompt: &str, tokens: usize, session: Option<&str>) -> String {
            let body =
                serde_json::json!({"prompt": prompt, "max_tokens": tokens, "temperature": 0, "session": session});
            self.post("/v1/completions", body)["choices"][0]["text"].as_str().unwrap().to_string()
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Greedy answers of requests decoded together, sessions continued, forked, evicted to
    /// disk and back, and a saved session continued by the other server.
    fn conversation(s: &Served, other: &Served, other_dir: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
        let prompts = ["ROMEO:", "JULIET:\nO Romeo", "First Citizen:\nBefore we proceed", "KING"];
        let mut answers: Vec<String> = std::thread::scope(|scope| {
            let asked: Vec<_> = prompts.iter().map(|p| scope.spawn(move || s.greedy(p, 40, None))).collect();
            asked.into_iter().map(|a| a.join().unwrap()).collect()
        });
        let new = || s.post("/v1/sessions", serde_json::json!({}))["id"].as_str().unwrap().to_string();
        let (a, b, c) = (new(), new(), new()); // (two fit in memory: one goes to disk and back)
        for (id, prompt) in [(&a, "ROMEO:\n"), (&b, "JULIET:\n"), (&c, "MERCUTIO:\n"), (&a, "\nJULIET:\n")] {
            answers.push(s.greedy(prompt, 30, Some(id)));
        }
        let fork = s.post(&format!("/v1/sessions/{a}/fork"), serde_json::json!({}))["id"].as_str().unwrap().to_string();
        answers.push(s.greedy("\nROMEO:", 30, Some(&fork)));
        answers.push(s.greedy("\nNURSE:", 30, Some(&b)));
        // The file a session is saved to, restored by the other server, goes on there as here.
        s.post(&format!("/v1/sessions/{a}/save"), serde_json::json!({"name": "a"}));
        std::fs::copy(dir.join("a.state.safetensors"), other_dir.join("a.state.safetensors")).unwrap();
        let there =
            other.post("/v1/sessions/restore", serde_json::json!({"name": "a"}))["id"].as_str().unwrap().to_string();
        answers.push(other.greedy("\nFRIAR:", 30, Some(&there)));
        answers.push(s.greedy("\nFRIAR:", 30, Some(&a)));
        answers
    }

    #[test]
    fn serving_on_the_device_answers_as_the_cpu_and_its_sessions_move_between_them() {
        if !device_here("GPU serving") {
            return;
        }
        let tmp = temp("serve-gpu");
        let dirs = [tmp.path().join("cpu"), tmp.path().join("gpu")];
        let start = |dir: &std::path::Path, device: &str| {
            let dir = dir.display().to_string();
            Served::start(&["--sessions-dir", &dir, "--max-sessions", "2", "--max-streams", "4", "--device", device])
        };
        let (cpu, gpu) = (start(&dirs[0], "cpu"), start(&dirs[1], "gpu"));
        std::fs::create_dir_all(&dirs[0]).unwrap();
        std::fs::create_dir_all(&dirs[1]).unwrap();
        let on_cpu = conversation(&cpu, &gpu, &dirs[1], &dirs[0]);
        let on_gpu = conversation(&gpu, &cpu, &dirs[0], &dirs[1]);
        assert_eq!(on_gpu, on_cpu);
        // The last two answers: each server continued the other's saved session as its own.
        assert_eq!(on_gpu[on_gpu.len() - 2], on_gpu[on_gpu.len() - 1]);
    }

    /// Whether two reports agree: equal text, equal counts, numbers within `tol` of
    /// the larger's magnitude (or of 1); the provenance (which names the device) aside.
    fn agree(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) -> Result<f64, String> {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                let diff = (x - y).abs() / x.abs().max(y.abs()).max(1.0);
                if diff <= tol {
                    Ok(diff)
                } else {
                    Err(format!("{at}: {x} against {y}"))
                }
            }
            (Value::Array(xs), Value::Array(ys)) if xs.len() == ys.len() => {
                let mut worst = 0f64;
                for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
                    worst = worst.max(agree(x, y, tol, &format!("{at}[{i}]"))?);
                }
                Ok(worst)
            }
            (Value::Object(xs), Value::Object(ys)) if xs.len() == ys.len() => {
                let mut worst = 0f64;
                for (k, x) in xs.iter().filter(|(k, _)| k.as_str() != "provenance") {
                    let y = ys.get(k).ok_or_else(|| format!("{at}.{k} missing"))?;
                    worst = worst.max(agree(x, y, tol, &format!("{at}.{k}"))?);
                }
                Ok(worst)
            }
            _ if a == b => Ok(0.0),
            _ => Err(format!("{at}: {a} against {b}")),
        }
    }

    #[test]
    fn the_microscope_on_the_device_reports_the_cpus_numbers() {
        if !device_here("GPU microscope") {
            return;
        }
        let tmp = temp("inspect-gpu");
        let model = golden("recall-trained");
        let text_file = common::example("text.txt");
        let prompt = "ada oslo, bo red, cy lima; bo red, ada ";
        // (the others read the same forward; these stay within a minute on lavapipe)
        let runs: [(&str, Vec<&str>); 5] = [
            ("sparsity", vec!["--text", &text_file]),
            ("ablate", vec!["--neurons", "1:0:3,0:1:7", "--heads", "1:1", "--prompt", prompt, "--tokens", "8"]),
            ("induction", vec!["--length", "12", "--sequences", "2"]),
            ("top", vec!["--layer", "1", "--head", "0", "--neuron", "0", "--text", &text_file, "--k", "12"]),
            ("synapses", vec!["--layer", "1", "--head", "0", "--prompt", prompt]),
        ];
        for (what, extra) in runs {
            let report = |device: &str| {
                let js = tmp.path().join(format!("{what}-{device}.json"));
                let j = js.display().to_string();
                let args = [&["inspect", what, "--model", &model, "--json", &j, "--device", device][..], &extra[..]];
                let o = bdh(&args.concat());
                assert!(o.status.success(), "{what} on {device}: {}", text(&o));
                let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&js).unwrap()).unwrap();
                (v, text(&o))
            };
            let ((cpu, _), (gpu, said)) = (report("cpu"), report("gpu"));
            assert!(gpu["provenance"]["device"].as_str().unwrap().starts_with("GPU"), "{}", gpu["provenance"]);
            let worst = agree(&gpu, &cpu, 1e-4, what).unwrap_or_else(|e| panic!("{what}: {e}\n{said}"));
            println!("inspect {what}: every number within {worst:.1e} (relative) of the CPU's");
        }
    }

    #[test]
    fn compare_on_the_device_gives_the_cpus_table() {
        if !device_here("bdh compare --device gpu") {
            return;
        }
        let tmp = temp("compare-gpu");
        let table = |device: &str| {
            let out = tmp.path().join(device);
            let args = ["compare", "--sizes", "xs", "--tokens", "8192", "--seeds", "1337", "--bdh-rates", "2e-3"];
            let rest = ["--gpt-rates", "4e-3", "--threads", "1", "--device", device, "--out", out.to_str().unwrap()];
            let o = bdh(&[&args[..], &rest[..]].concat());
            assert!(o.status.success(), "{device}: {}", text(&o));
            let json = std::fs::read_to_string(out.join("table.json")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            v["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seeds"][0]["val_loss"].as_f64().unwrap())
                .collect::<Vec<f64>>()
        };
        let (cpu, gpu) = (table("cpu"), table("gpu"));
        assert_eq!(cpu.len(), 2);
        for (a, b) in gpu.iter().zip(&cpu) {
            assert!((a - b).abs() / b < 1e-3, "the device's table {gpu:?}, the CPU's {cpu:?}");
        }
        println!("compare: BDH and GPT validation losses {gpu:?} on the device, {cpu:?} on the CPU");
    }
}
