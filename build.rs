//! Compiles `proto/` with a pure-Rust protobuf compiler (protox), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rapport/v1/events.proto",
        "proto/rapport/v1/outputs.proto",
        "proto/rapport/v1/state.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
