// `ferry trace` and `ferry bench-trace` in a build without eBPF (FERRY_BPF=OFF): say so.
#include <fmt/format.h>

#include "tools/ferry/commands.hh"

namespace ferry::cli {

void add_trace(CLI::App& app, Globals& g) {
  auto* cmd = app.add_subcommand("trace", "Trace KVM VMs' page dirtying and migration connections with eBPF.");
  cmd->allow_extras();
  cmd->callback([&g] {
    fmt::print(stderr, "ferry trace: this ferry was built without eBPF (FERRY_BPF=OFF); rebuild with -DFERRY_BPF=ON\n");
    g.rc = 1;
  });
}

void add_bench_trace(CLI::App& app, Globals& g) {
  auto* cmd = app.add_subcommand("bench-trace", "Benchmark: the cost of `ferry trace` (needs eBPF).");
  cmd->allow_extras();
  cmd->callback([&g] {
    fmt::print(stderr, "ferry bench-trace: this ferry was built without eBPF (FERRY_BPF=OFF); rebuild with -DFERRY_BPF=ON\n");
    g.rc = 1;
  });
}

}  // namespace ferry::cli
