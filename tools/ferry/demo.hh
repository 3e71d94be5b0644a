#pragma once
// The demo scenarios behind `ferry demo` (cmd_demo.cc wires the flags).
namespace ferry::cli {

// A Linux guest: boot, verified workload, console, snapshot, restore.
int run_linux_demo(bool json, bool in_sandbox);

}  // namespace ferry::cli
