//! What `mule-testbed emulate` takes: the command-line flags ([`EmulateArgs`]) and the fully
//! specified run they resolve to ([`EmulateOptions`]).

use std::path::PathBuf;

use crate::run::{Audience, Publish, PublishAt};
use crate::trace::{self, Format};
use crate::units::{Rate, Size};

/// Arguments of `mule-testbed emulate` (flatten into a clap subcommand).
#[derive(clap::Args, Clone, Debug)]
pub struct EmulateArgs {
    /// Contact trace: CSV `start_s,end_s,node_a,node_b` or The ONE `time CONN a b up|down`.
    #[arg(long)]
    pub trace: PathBuf,
    /// Trace format (default: guessed from the content).
    #[arg(long)]
    pub format: Option<Format>,
    /// Link rate on the emulated wire (real time) per contact direction, e.g. 8mbit. In trace
    /// time a contact carries rate ÷ time-scale (see the module docs).
    #[arg(long, default_value = "8mbit")]
    pub rate: Rate,
    /// Time compression K: a contact of d trace seconds lasts d/K real seconds.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// What to publish where: SIZE@NODE, e.g. 1MB@0.
    #[arg(long)]
    pub publish: Publish,
    /// When to publish: a fraction of the trace (0.25, 25%; a bare number must be between 0
    /// and 1) or trace seconds with the unit (3600s).
    #[arg(long, default_value = "0")]
    pub publish_at: PublishAt,
    /// Who subscribes: `all` (every node but the origin) or a fraction (0.3, 30%).
    #[arg(long, default_value = "all")]
    pub audience: Audience,
    /// Node count (default: highest id in the trace + 1).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Contacts shorter than this many trace seconds are extended to it (not dropped).
    #[arg(long, default_value_t = trace::DEFAULT_MIN_CONTACT_S)]
    pub min_contact: f64,
    /// The `mule` binary (default: $MULE_BIN, else `mule` next to this program, else PATH).
    #[arg(long)]
    pub mule: Option<PathBuf>,
    /// Piece size of the published bundle.
    #[arg(long, default_value = "64KiB")]
    pub piece_size: Size,
    /// Bytes a node outside the audience may carry.
    #[arg(long, default_value = "256MiB")]
    pub carry_quota: Size,
    /// Real seconds to keep going after the trace ended, for transfers in flight.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Seed of the audience choice and of the published file's content.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory: results.json, nodes.csv, contacts.csv, summary.md, emulation.json,
    /// emulation_nodes.csv, plots, logs/ and config/.
    #[arg(long)]
    pub out: PathBuf,
}

/// A fully specified emulation (what [`run`] needs).
#[derive(Clone, Debug)]
pub struct EmulateOptions {
    /// The trace file.
    pub trace: PathBuf,
    /// Its format (`None`: guess).
    pub format: Option<Format>,
    /// Link rate per contact direction on the emulated wire (real time).
    pub rate: Rate,
    /// Time compression `K` (`> 0`).
    pub time_scale: f64,
    /// Bundle size and origin.
    pub publish: Publish,
    /// When to publish.
    pub publish_at: PublishAt,
    /// Who subscribes.
    pub audience: Audience,
    /// Declared node count.
    pub nodes: Option<u32>,
    /// Minimum contact length, trace seconds.
    pub min_contact: f64,
    /// The `mule` binary.
    pub mule: PathBuf,
    /// Piece size.
    pub piece_size: Size,
    /// Carry quota of every node.
    pub carry_quota: Size,
    /// Real seconds after the trace's end before giving up.
    pub grace: f64,
    /// Seed (audience, file content).
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
}

impl EmulateArgs {
    /// Resolves defaults (the `mule` binary) into options.
    pub fn options(&self) -> EmulateOptions {
        EmulateOptions {
            trace: self.trace.clone(),
            format: self.format,
            rate: self.rate,
            time_scale: self.time_scale,
            publish: self.publish,
            publish_at: self.publish_at,
            audience: self.audience,
            nodes: self.nodes,
            min_contact: self.min_contact,
            mule: self.mule.clone().unwrap_or_else(default_mule),
            piece_size: self.piece_size,
            carry_quota: self.carry_quota,
            grace: self.grace,
            seed: self.seed,
            out: self.out.clone(),
        }
    }
}

/// `$MULE_BIN`, else `mule` next to the running executable, else `mule` (searched in PATH).
pub fn default_mule() -> PathBuf {
    if let Some(p) = std::env::var_os("MULE_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let p = d.join("mule");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("mule")
}
