//! Command-line interface definition (clap). The verbs are implemented in
//! [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Mule: store, carry and forward signed bundles between devices that meet
/// only now and then.
#[derive(Debug, Parser)]
#[command(name = "mule", version, about)]
pub struct Cli {
    /// Options every verb takes.
    #[command(flatten)]
    pub global: Global,
    /// The verb.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every verb.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Data directory (default: the config's data_dir, else $STATE_DIRECTORY,
    /// else $XDG_DATA_HOME/mule or ~/.local/share/mule).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (default: the embedded defaults; no file needed).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The verbs.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the node daemon until SIGTERM or Ctrl-C.
    Run,
    /// Generate or show ed25519 keys (publisher or node keys).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Cut a file into pieces, sign a manifest and store the bundle (into the
    /// running daemon if there is one, which then spreads it). Prints the id.
    Publish(Box<PublishArgs>),
    /// List bundles: id, name, version, priority, pieces have/total, state.
    Bundles(JsonFlag),
    /// Show one bundle's manifest and progress.
    Inspect {
        /// Bundle id (64 hex digits, or a unique prefix).
        id: String,
        /// Output JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a complete bundle's content to a file.
    Export {
        /// Bundle id (or unique prefix).
        id: String,
        /// Where to write the content.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Write a bundle's signed manifest to a file.
    Manifest {
        /// Bundle id (or unique prefix).
        id: String,
        /// Where to write the manifest.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify a signed manifest file and store it (content still missing).
    ImportManifest {
        /// The manifest file.
        file: PathBuf,
    },
    /// Node id, neighbours, bundles with progress, store use (needs the daemon).
    Status(JsonFlag),
    /// Current neighbours with transport and contact age (needs the daemon).
    Peers(JsonFlag),
    /// Contact history and predictions per peer (needs the daemon).
    Contacts(JsonFlag),
    /// Subscribe the running node to a channel.
    Subscribe {
        /// Channel name.
        channel: String,
    },
    /// Unsubscribe the running node from a channel.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Check or show configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read back every stored piece (of the given bundles, or all) and check it against its
    /// manifest; exits non-zero naming each bad piece. Works on the store directly, or
    /// through the running daemon.
    Verify {
        /// Drop the bad pieces so they are fetched again from peers.
        #[arg(long)]
        repair: bool,
        /// Bundle ids (or unique prefixes); default: every bundle.
        ids: Vec<String>,
    },
    /// Removable media (USB sticks, SD cards) as a transport.
    #[command(subcommand)]
    Media(MediaCommand),
}

/// `mule media …`
#[derive(Debug, Clone, Subcommand)]
pub enum MediaCommand {
    /// Write bundles from the store to the medium mounted at DIR (default: every bundle
    /// with pieces; the layout is DIR/mule/..., see README "Removable media").
    Write {
        /// The medium's mount point (or any directory).
        dir: PathBuf,
        /// Only this bundle (id or unique prefix); repeatable.
        #[arg(long = "bundle", value_name = "ID")]
        bundles: Vec<String>,
        /// Only bundles addressed to this channel; repeatable.
        #[arg(long = "channel", value_name = "CH")]
        channels: Vec<String>,
        /// Output JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Import every verified manifest and piece the running node wants or may carry
    /// from the medium at DIR (for a systemd .mount-triggered unit; nodes with
    /// `media.paths` do this by themselves).
    Sync {
        /// The medium's mount point.
        dir: PathBuf,
        /// Output JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
}

/// `--json` switch.
#[derive(Debug, Clone, Args)]
pub struct JsonFlag {
    /// Output JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// `mule key …`
#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Generate a new key into FILE (mode 0600; never overwrites).
    Gen {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key of FILE in hex (what goes into a trust list).
    Show {
        /// The key file.
        file: PathBuf,
    },
}

/// `mule config …`
#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file; errors name file, line and key.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the effective configuration (defaults included) as TOML.
    Show,
}

/// `mule publish …`
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The content to publish.
    pub file: PathBuf,
    /// Bundle name (e.g. the package name).
    #[arg(long)]
    pub name: String,
    /// Version label.
    #[arg(long)]
    pub version: String,
    /// Publisher key file (from `mule key gen`).
    #[arg(long, value_name = "KEYFILE")]
    pub key: PathBuf,
    /// Priority class: critical, high, normal or bulk.
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// Id of a bundle that must be complete and installed first (repeatable).
    #[arg(long = "depends", value_name = "ID")]
    pub depends: Vec<String>,
    /// Id of a bundle this version replaces (repeatable).
    #[arg(long = "replaces", value_name = "ID")]
    pub replaces: Vec<String>,
    /// Channel or node id that wants it (repeatable).
    #[arg(long = "audience", value_name = "CH")]
    pub audience: Vec<String>,
    /// Lifetime, e.g. `30d`, `12h` (default 30 days).
    #[arg(long, default_value = "30d")]
    pub expires: String,
    /// Piece size in bytes (default: the built-in default).
    #[arg(long, value_name = "BYTES")]
    pub piece_size: Option<u32>,
    /// Free-form metadata `KEY=VALUE` (repeatable), e.g. `run=/usr/sbin/apply`.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Release number within the lineage (this key, `--name`). Default: one more than
    /// the highest release of the lineage in this node's store. A second, different bundle
    /// with a release number already used is refused.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub release: Option<u64>,
    /// Install phase `PERCENT%@DELAY` (repeatable, widening), e.g. `--stage 5%@0 --stage
    /// 50%@2d --stage 100%@4d`: nodes in the first 5% of cohorts install at once, up to 50%
    /// after 2 days, everyone after 4. Delays in s, m, h or d after publishing. Default:
    /// everyone at once.
    #[arg(long = "stage", value_name = "PCT%@DELAY")]
    pub stages: Vec<mule_bundle::Stage>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
