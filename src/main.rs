//! The `decodex` command: a thin dispatcher over the library (see `cli`).

mod cli;

fn main() {
    std::process::exit(cli::run());
}
