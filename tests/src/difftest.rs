//! The differential test of `ctdev attach --takeover` against the real
//! runc and crun: a random OCI device list, a real container, every cell of
//! a grid of devices × {r, w, rw, m} probed from inside (1) with only the
//! runtime's program, (2) after the takeover, (3) after `ctdev detach`.
//!
//! A case fails when ctdev allows a cell the runtime denied, when a cell it
//! denies that the runtime allowed is missing from the takeover's own
//! `narrowed` list, when the detach does not give back exactly the
//! runtime's access, or when ctdev's model of the runtime
//! ([`ctdev::import::RuntimeModel`]) disagrees with the real runtime. A
//! list the runtime refuses to run must be one the model refuses too.
//!
//! Probing: device nodes are made from the host in the container's root
//! (`/probe`), then one shell inside tries `exec 3<`, `3>`, `3<>` on each
//! and `mknod` in `/tmp`; `Operation not permitted` (EPERM, the device
//! controller's answer) is a denial, `Permission denied` (EACCES: not the
//! controller) fails the test, any other outcome (success, or ENXIO,
//! EOPNOTSUPP… from the driver, which the controller let through) is an
//! allow.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Instant;

use ctdev::import::{
    from_oci_config, oci_config_for_runc, translate, DeviceRuleSpec, Narrowed, RuntimeModel,
    Semantics,
};
use ctdev::rule::{Access, DeviceType};
use ctdev_common::{ACCESS_MKNOD, ACCESS_READ, ACCESS_WRITE, DEV_BLOCK, DEV_CHAR};
use serde_json::{json, Value};

use crate::runtimes::{OciRuntime, RuncContainer};
use crate::TestEnv;

/// Majors the random lists use (and the grid probes): real drivers (mem,
/// tty, misc, pts, loop/vcs) and numbers without one (200, 201, 242).
pub const MAJORS: [u32; 7] = [1, 5, 10, 136, 200, 201, 7];
/// Minors the random lists use.
pub const MINORS: [u32; 6] = [3, 5, 0, 200, 229, 1];
/// A major and a minor no list names.
const UNNAMED: (u32, u32) = (242, 77);

/// The requests probed, with their names.
pub const CELLS: [(u32, &str); 4] = [
    (ACCESS_READ, "r"),
    (ACCESS_WRITE, "w"),
    (ACCESS_READ | ACCESS_WRITE, "rw"),
    (ACCESS_MKNOD, "m"),
];

/// The devices probed: every pool major × minor and the unnamed ones,
/// both types, minus `c 1:1` (/dev/mem: its open needs CAP_SYS_RAWIO, an
/// EPERM that is not the device controller's).
pub fn grid() -> Vec<(u32, u32, u32)> {
    let majors: Vec<u32> = MAJORS.iter().copied().chain([UNNAMED.0]).collect();
    let minors: Vec<u32> = MINORS.iter().copied().chain([UNNAMED.1]).collect();
    let mut out = Vec::new();
    for t in [DEV_CHAR, DEV_BLOCK] {
        for &ma in &majors {
            for &mi in &minors {
                if !(t == DEV_CHAR && ma == 1 && mi == 1) {
                    out.push((t, ma, mi));
                }
            }
        }
    }
    out
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A random OCI `linux.resources.devices` list of 1–6 rules over the pool
/// (non-empty access: runc refuses empty access).
pub fn random_list(rng: &mut Rng) -> Value {
    let len = 1 + rng.below(6) as usize;
    let mut list = Vec::new();
    if rng.below(3) == 0 {
        list.push(json!({"allow": rng.below(2) == 0, "access": "rwm"}));
    }
    for _ in 0..len {
        let access: String = ["r", "w", "m"]
            .iter()
            .filter(|_| rng.below(2) == 0)
            .copied()
            .collect();
        let access = if access.is_empty() {
            "rwm".to_string()
        } else {
            access
        };
        let mut rule = json!({"allow": rng.below(2) == 0, "access": access});
        match rng.below(8) {
            0 => {
                rule["type"] = "a".into();
            }
            n => {
                rule["type"] = if n < 5 { "c" } else { "b" }.into();
                if rng.below(4) != 0 {
                    rule["major"] = MAJORS[rng.below(MAJORS.len() as u64) as usize].into();
                }
                if rng.below(3) != 0 {
                    rule["minor"] = MINORS[rng.below(MINORS.len() as u64) as usize].into();
                }
            }
        }
        list.push(rule);
    }
    Value::Array(list)
}

/// The five lists of issue #10 (item 9).
pub fn issue_lists() -> Vec<Value> {
    vec![
        json!([{"allow":true,"access":"rwm"},{"allow":false,"type":"c","major":10,"minor":229,"access":"rwm"}]),
        json!([{"allow":true,"type":"a","access":"rwm"},{"allow":false,"type":"c","major":200,"minor":1,"access":"r"},{"allow":true,"type":"c","major":200,"access":"r"}]),
        json!([{"allow":true,"type":"c","major":200,"access":"r"},{"allow":true,"type":"c","major":200,"minor":1,"access":"w"}]),
        json!([{"allow":true,"type":"c","major":200,"minor":1,"access":"r"},{"allow":false,"type":"c","major":200,"access":"r"}]),
        json!([{"allow":true,"type":"a","access":"rwm"},{"allow":false,"type":"b","access":"r"}]),
    ]
}

/// One probed cell: device index in [`grid`], request index in [`CELLS`].
type Verdicts = Vec<bool>;

/// Makes the probe nodes in the container's root (from the host).
fn make_nodes(root: &Path, grid: &[(u32, u32, u32)]) {
    let dir = root.join("probe");
    std::fs::create_dir_all(&dir).expect("create probe dir");
    for (i, &(t, ma, mi)) in grid.iter().enumerate() {
        let path = dir.join(i.to_string());
        if path.exists() {
            continue;
        }
        let dev_type = if t == DEV_CHAR {
            DeviceType::Char
        } else {
            DeviceType::Block
        };
        crate::make_node(&path, dev_type, ma, mi);
        let meta = std::fs::metadata(&path).expect("stat probe node");
        assert!(meta.file_type().is_char_device() || meta.file_type().is_block_device());
    }
}

/// The shell script probing every cell; prints `i j A` or `i j D` lines
/// (`X message` for an outcome that is neither).
fn script(grid: &[(u32, u32, u32)]) -> String {
    let mut s = String::from(
        "v() { case \"$2\" in '') echo \"$1 A\";; *'not permitted'*) echo \"$1 D\";; \
         *'ermission denied'*) echo \"$1 X $2\";; *) echo \"$1 A\";; esac; }\n",
    );
    for (i, &(t, ma, mi)) in grid.iter().enumerate() {
        let p = format!("/probe/{i}");
        let letter = if t == DEV_CHAR { 'c' } else { 'b' };
        let _ = writeln!(s, "v '{i} 0' \"$( (exec 3<{p}) 2>&1)\"");
        let _ = writeln!(s, "v '{i} 1' \"$( (exec 3>{p}) 2>&1)\"");
        let _ = writeln!(s, "v '{i} 2' \"$( (exec 3<>{p}) 2>&1)\"");
        let _ = writeln!(
            s,
            "v '{i} 3' \"$(mknod /tmp/mk{i} {letter} {ma} {mi} 2>&1 && rm -f /tmp/mk{i})\""
        );
    }
    s
}

/// Probes every cell from inside the container.
fn probe_all(c: &RuncContainer, grid: &[(u32, u32, u32)]) -> Verdicts {
    let out = c.exec(&["/bin/sh", "-c", &script(grid)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = vec![false; grid.len() * CELLS.len()];
    let mut seen = 0;
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(i), Some(j), Some(verdict)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let (i, j): (usize, usize) = (i.parse().expect("index"), j.parse().expect("cell"));
        match verdict {
            "A" => v[i * CELLS.len() + j] = true,
            "D" => {}
            _ => panic!(
                "probe of {:?} {} gave an unexpected outcome: {line}",
                grid[i], CELLS[j].1
            ),
        }
        seen += 1;
    }
    assert_eq!(
        seen,
        v.len(),
        "not every cell was probed: {}\nstderr: {}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

/// What one case found.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaseOutcome {
    /// The runtime refused the list (and so did the model).
    pub refused: bool,
    /// The runtime failed to start the container for another reason
    /// (the model accepts the list; nothing to compare).
    pub start_failed: bool,
    /// Cells ctdev narrowed (all reported).
    pub narrowed: usize,
    /// Cells probed per phase.
    pub cells: usize,
}

fn cell_name(d: (u32, u32, u32), j: usize) -> String {
    let t = if d.0 == DEV_CHAR { 'c' } else { 'b' };
    format!("{t} {}:{} {}", d.1, d.2, CELLS[j].1)
}

/// Runs one case: `list` under `runtime`; panics with the list on any
/// violation.
pub fn run_case(runtime: OciRuntime, list: &Value, label: &str) -> CaseOutcome {
    let semantics = match runtime {
        OciRuntime::Runc => Semantics::Runc,
        OciRuntime::Crun => Semantics::Crun,
    };
    let grid = grid();
    let started = RuncContainer::try_start(runtime, "diff", Some(list.clone()));
    // The model reads the config the way the takeover does.
    let model_of = |config: &Path| -> Result<(RuntimeModel, Vec<DeviceRuleSpec>), String> {
        let specs = match runtime {
            OciRuntime::Runc => oci_config_for_runc(config),
            OciRuntime::Crun => from_oci_config(config),
        }
        .map_err(|e| e.to_string())?;
        RuntimeModel::new(semantics, &specs)
            .map(|m| (m, specs))
            .map_err(|e| e.to_string())
    };
    let c = match started {
        Ok(c) => c,
        Err(e) => {
            // The runtime refused: the model must refuse too.
            let dir = std::env::temp_dir().join(crate::unique("refused"));
            std::fs::create_dir_all(&dir).expect("tmp");
            let config = dir.join("config.json");
            std::fs::write(
                &config,
                json!({"linux": {"resources": {"devices": list}}}).to_string(),
            )
            .expect("write config");
            let model = model_of(&config);
            let _ = std::fs::remove_dir_all(&dir);
            let refused = model.is_err();
            if !refused {
                // Not the device list (runc refuses those with "not
                // supported by devices cgroupv1"): report, compare nothing.
                assert!(
                    !e.contains("cgroupv1") && !e.contains("punch hole"),
                    "{label}: {} refused {list} ({e}) but ctdev's model accepts it",
                    runtime.binary()
                );
                println!(
                    "difftest: {label}: {} did not start {list}: {e}",
                    runtime.binary()
                );
            }
            return CaseOutcome {
                refused,
                start_failed: !refused,
                ..Default::default()
            };
        }
    };
    let (model, specs) = model_of(&c.config_path()).unwrap_or_else(|e| {
        panic!(
            "{label}: {} ran {list} but the model refuses: {e}",
            runtime.binary()
        )
    });
    make_nodes(&c.rootfs(), &grid);
    let before = probe_all(&c, &grid);
    // The model is the runtime, cell by cell.
    for (i, &d) in grid.iter().enumerate() {
        for (j, &(req, _)) in CELLS.iter().enumerate() {
            assert_eq!(
                model.allows(d.0, d.1, d.2, req),
                before[i * CELLS.len() + j],
                "{label}: ctdev's model of {} disagrees with the real one on {} for {list}",
                runtime.binary(),
                cell_name(d, j)
            );
        }
    }

    let env = TestEnv::new("diff");
    let cg = c.cgroup_dir();
    let root = c.state_root();
    let out = env.ok(&[
        "--json",
        "attach",
        cg.to_str().expect("utf-8"),
        "--takeover",
        "--runtime-root",
        root.to_str().expect("utf-8"),
    ]);
    let report: Value = serde_json::from_str(&out).expect("takeover JSON");
    let reported: BTreeSet<String> = report["narrowed"]
        .as_array()
        .expect("narrowed list")
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let after = probe_all(&c, &grid);
    let mut narrowed = 0;
    for (i, &d) in grid.iter().enumerate() {
        for (j, &(req, _)) in CELLS.iter().enumerate() {
            let k = i * CELLS.len() + j;
            assert!(
                !after[k] || before[k],
                "{label}: after takeover ctdev allows {} which {} denied; list {list}; report {report}",
                cell_name(d, j),
                runtime.binary()
            );
            if before[k] && !after[k] {
                narrowed += 1;
                let (major, minor) = model.representative(d.1, d.2);
                let n = Narrowed {
                    dev_type: DeviceType::from_kernel(d.0).expect("type"),
                    major,
                    minor,
                    access: Access::from_bits(req),
                };
                assert!(
                    reported.contains(&n.to_string()),
                    "{label}: takeover denies {} which {} allowed, but did not report {n}; list {list}; report {report}",
                    cell_name(d, j),
                    runtime.binary()
                );
            }
        }
    }
    env.ok(&["detach", cg.to_str().expect("utf-8")]);
    let restored = probe_all(&c, &grid);
    for (k, (&b, &r)) in before.iter().zip(&restored).enumerate() {
        assert_eq!(
            b,
            r,
            "{label}: after detach {} is not the runtime's again; list {list}",
            cell_name(grid[k / CELLS.len()], k % CELLS.len())
        );
    }
    // The translation (pure) agrees with what the kernel did.
    let tr = translate(semantics, &specs).expect("translate");
    assert_eq!(
        tr.narrowed.len(),
        reported.len(),
        "{label}: report and translation differ"
    );
    CaseOutcome {
        refused: false,
        start_failed: false,
        narrowed,
        cells: before.len(),
    }
}

/// Totals of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunTotals {
    /// Lists tried.
    pub lists: usize,
    /// Lists the runtime refused (the model refused them too).
    pub refused: usize,
    /// Lists the runtime could not start for other reasons.
    pub start_failed: usize,
    /// Cells compared (three phases each).
    pub cells: usize,
    /// Cells narrowed (each reported).
    pub narrowed: usize,
}

/// Runs `cases` random lists from `seed` (alternating runc and crun, the
/// issue's five lists first under both), printing a summary line with the
/// rate.
pub fn run(cases: usize, seed: u64, with_fixed: bool) -> RunTotals {
    let start = Instant::now();
    let mut totals = RunTotals::default();
    let mut add = |o: CaseOutcome| {
        totals.lists += 1;
        totals.refused += usize::from(o.refused);
        totals.start_failed += usize::from(o.start_failed);
        totals.cells += o.cells;
        totals.narrowed += o.narrowed;
    };
    if with_fixed {
        for (i, list) in issue_lists().iter().enumerate() {
            for rt in [OciRuntime::Runc, OciRuntime::Crun] {
                add(run_case(rt, list, &format!("issue list {}", i + 1)));
            }
        }
    }
    let mut rng = Rng::new(seed);
    for n in 0..cases {
        let list = random_list(&mut rng);
        let rt = if n % 2 == 0 {
            OciRuntime::Runc
        } else {
            OciRuntime::Crun
        };
        add(run_case(rt, &list, &format!("seed {seed} case {n}")));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "difftest: {} lists ({} refused by the runtime and the model, {} not started), {} cells x 3 phases, {} narrowed (all reported), 0 widened, {:.1} s, {:.2} lists/s",
        totals.lists,
        totals.refused,
        totals.start_failed,
        totals.cells,
        totals.narrowed,
        secs,
        totals.lists as f64 / secs
    );
    totals
}
