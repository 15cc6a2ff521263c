//! What every benchmark section opens with, so that figures always come with the command that
//! made them and the machine and load they ran under.

use std::fmt::Write as _;

use super::Machine;

/// A section's opening: its `heading`, the `command` that regenerates it, and the machine it
/// ran on with the `load` average over the run.
pub fn preamble(heading: &str, command: &str, m: &Machine, load: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{heading}\n");
    let _ = writeln!(s, "Command: `{command}`\n");
    let _ = writeln!(
        s,
        "Machine: {} cores (`nproc`), {}, {} RAM; {}; {}; commit `{}`; {load}.\n",
        m.cores, m.cpu, m.memory, m.date, m.rustc, m.commit
    );
    s
}
