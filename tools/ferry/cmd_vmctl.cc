// The control API's client side: `ferry status|pause|resume|snapshot|quit|
// console|dirty-rate|memory --vm SOCKET`. Each is one request
// (docs/control-api.md).
#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "userspace/control/api.hh"
#include "tools/ferry/commands.hh"
#include "tools/ferry/vm_report.hh"

namespace ferry::cli {
namespace {

struct CtlOptions {
  std::string vm;
  bool json = false;
  std::string path;  // snapshot
  std::vector<std::string> words;  // console
  double seconds = 0;              // dirty-rate
  unsigned harvest_ms = 0;         // dirty-rate
};

using Render = std::string (*)(const nlohmann::json&);

CLI::App* add_ctl(CLI::App& app, Globals& g, const char* name, const char* help, Render render,
                  std::shared_ptr<CtlOptions> opts) {
  auto* cmd = app.add_subcommand(name, help);
  cmd->add_option("--vm", opts->vm, "the VM's control socket (printed by `ferry run`)")->required();
  cmd->add_flag("--json", opts->json, "print the API's answer as JSON");
  cmd->callback([opts, &g, name, render] {
    nlohmann::json req{{"cmd", name}};
    if (!opts->path.empty()) req["path"] = std::filesystem::absolute(opts->path).string();
    if (opts->seconds > 0) req["seconds"] = opts->seconds;
    if (opts->harvest_ms > 0) req["harvest_ms"] = opts->harvest_ms;
    if (!opts->words.empty()) {
      std::string line;
      for (const auto& w : opts->words) line += (line.empty() ? "" : " ") + w;
      req["input"] = line + "\n";
    }
    auto r = control::call(opts->vm, req);
    if (!r) {
      fmt::print(stderr, "ferry {}: {}\n", name, r.error());
      g.rc = 1;
      return;
    }
    if (opts->json)
      fmt::print("{}\n", r->dump(2));
    else
      fmt::print("{}", render(*r));
  });
  return cmd;
}

std::string dirty_rate_text(const nlohmann::json& r) {
  const double pps = r["pages_per_s"].get<double>();
  std::string out = fmt::format(
      "dirty rate   {:.0f} pages/s ({:.2f} MiB/s) over {:.1f} s, {} harvests every {} ms ({} tracking)\n"
      "working set  {} pages ({:.1f} MiB) dirtied at least once\n",
      pps, pps * 4096 / 1048576, r["seconds"].get<double>(), r["harvests"].get<unsigned>(),
      r["harvest_ms"].get<unsigned>(), r["backend"].get<std::string>(), r["working_set_pages"].get<std::uint64_t>(),
      static_cast<double>(r["working_set_pages"].get<std::uint64_t>()) * 4096 / 1048576);
  const auto& v = r["per_vcpu"];
  for (std::size_t i = 0; i < v.size(); ++i)
    out += fmt::format("  vCPU {:<3} {:.0f} pages/s\n", i, v[i].get<double>() / r["seconds"].get<double>());
  if (v.empty()) out += "  (per-vCPU figures need the dirty ring; this VM uses the bitmap)\n";
  return out;
}

std::string state_text(const nlohmann::json& r) { return fmt::format("VM {}\n", r["state"].get<std::string>()); }

// `ferry memory read|write`: guest physical memory through the VMM.
void add_memory(CLI::App& app, Globals& g) {
  struct MemOptions {
    std::string vm, hex;
    std::uint64_t gpa = 0, len = 0;
    bool json = false;
  };
  auto o = std::make_shared<MemOptions>();
  auto* mem = app.add_subcommand("memory", "Read or write a running VM's guest physical memory (diagnostics).");
  mem->require_subcommand(1);
  mem->footer("A write is a VMM write, like a device's DMA: dirty tracking records it, so a live migration in\n"
              "pre-copy carries it to the destination. A paused VM refuses writes. Up to 16 KiB per request.");
  auto add_common = [&](CLI::App* c) {
    c->add_option("--vm", o->vm, "the VM's control socket (printed by `ferry run`)")->required();
    c->add_flag("--json", o->json, "print the API's answer as JSON");
    c->add_option("GPA", o->gpa, "guest physical address (0x... for hex)")->required();
  };
  auto* rd = mem->add_subcommand("read", "Print LEN bytes at GPA as hex.");
  add_common(rd);
  rd->add_option("LEN", o->len, "bytes to read (1..16384)")->required()->check(CLI::Range(1, 16384));
  auto* wr = mem->add_subcommand("write", "Write the bytes HEX (e.g. deadbeef) at GPA.");
  add_common(wr);
  wr->add_option("HEX", o->hex, "the bytes, as pairs of hex digits")->required();
  auto run = [o, &g](nlohmann::json req) {
    req["gpa"] = o->gpa;
    const std::string name = req["cmd"].get<std::string>();
    auto r = control::call(o->vm, req);
    if (!r) {
      fmt::print(stderr, "ferry {}: {}\n", name, r.error());
      g.rc = 1;
      return;
    }
    if (o->json)
      fmt::print("{}\n", r->dump(2));
    else if (r->contains("hex"))
      fmt::print("{:#x}  {}\n", (*r)["gpa"].get<std::uint64_t>(), (*r)["hex"].get<std::string>());
    else
      fmt::print("wrote {} bytes at {:#x}\n", (*r)["bytes"].get<std::size_t>(), (*r)["gpa"].get<std::uint64_t>());
  };
  rd->callback([o, run] { run({{"cmd", "memory-read"}, {"len", o->len}}); });
  wr->callback([o, run] { run({{"cmd", "memory-write"}, {"hex", o->hex}}); });
}

}  // namespace

void add_vm_control(CLI::App& app, Globals& g) {
  add_ctl(app, g, "status", "Show a running VM's state, guest workload and self-verification counters.", status_text,
          std::make_shared<CtlOptions>());
  add_ctl(app, g, "pause", "Stop a VM's vCPUs (prompt: every vCPU acknowledges).", state_text,
          std::make_shared<CtlOptions>());
  add_ctl(app, g, "resume", "Let a paused VM's vCPUs run again.", state_text, std::make_shared<CtlOptions>());
  add_ctl(app, g, "quit", "Stop a VM and end its ferry process.", state_text, std::make_shared<CtlOptions>());
  auto snap = std::make_shared<CtlOptions>();
  auto* cmd = add_ctl(app, g, "snapshot",
                      "Write a VM's complete state and memory to FILE (pausing it briefly if it runs); "
                      "`ferry restore FILE` continues it.",
                      snapshot_text, snap);
  cmd->add_option("FILE", snap->path, "where to write the snapshot")->required();
  auto dr = std::make_shared<CtlOptions>();
  dr->seconds = 1;
  dr->harvest_ms = 100;
  auto* dcmd = add_ctl(app, g, "dirty-rate",
                       "Measure how fast a VM dirties memory (like QEMU's calc-dirty-rate): turns KVM dirty logging on, "
                       "harvests on a schedule, turns it off. While it runs, `ferry trace` sees the VM's dirtying.",
                       dirty_rate_text, dr);
  dcmd->add_option("--seconds", dr->seconds, "how long to measure (up to 60; the VM's API waits meanwhile)")
      ->capture_default_str()->check(CLI::Range(0.01, 60.0));
  dcmd->add_option("--harvest-ms", dr->harvest_ms, "harvest interval: a page counts once per interval")
      ->capture_default_str()->check(CLI::Range(10u, 60000u));
  auto con = std::make_shared<CtlOptions>();
  auto* ccmd = add_ctl(app, g, "console", "Type a line on the guest's serial console (its answer shows in the console log).",
                       [](const nlohmann::json& r) { return fmt::format("sent {} bytes\n", r["bytes"].get<std::size_t>()); },
                       con);
  ccmd->add_option("TEXT", con->words, "the line to type (a newline is added)")->required();
  add_memory(app, g);
}

}  // namespace ferry::cli
