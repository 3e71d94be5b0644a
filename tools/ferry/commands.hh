#pragma once
// One function per subcommand file: each adds its CLI11 subcommand and the
// callback that runs it. The callback stores the exit status in `rc`.
#include <CLI/CLI.hpp>

namespace ferry::cli {

struct Globals {
  std::string log_level;
  int rc = 0;
};

void add_doctor(CLI::App& app, Globals& g);
void add_demo(CLI::App& app, Globals& g);
void add_run(CLI::App& app, Globals& g);
void add_restore(CLI::App& app, Globals& g);
void add_vm_control(CLI::App& app, Globals& g);
void add_receive(CLI::App& app, Globals& g);
void add_migrate(CLI::App& app, Globals& g);
void add_bench(CLI::App& app, Globals& g);
void add_bench_transport(CLI::App& app, Globals& g);  // cmd_bench_transport.cc
void add_trace(CLI::App& app, Globals& g);
void add_bench_trace(CLI::App& app, Globals& g);  // cmd_bench_trace.cc; a stub in cmd_trace_off.cc

}  // namespace ferry::cli
