// `ferry doctor`: can live migration work on this host, and if not, why.
#include <unistd.h>

#include <cstdlib>

#include <fmt/format.h>

#include "tools/doctor/checks.hh"
#include "tools/ferry/commands.hh"

namespace ferry::cli {

void add_doctor(CLI::App& app, Globals& g) {
  struct Opts {
    bool json = false;
    std::string device = "/dev/kvm";
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("doctor",
                                 "Check everything Ferry needs from this kernel: KVM, io_uring, eBPF, userfaultfd, "
                                 "locked memory, huge pages, kTLS. Each line is OK/WARN/FAIL with a remedy. "
                                 "Exit status 0 when live migration can work here, 1 when it cannot (reason first).");
  cmd->add_flag("--json", opts->json, "print one JSON object instead of the table");
  cmd->add_option("--kvm-device", opts->device, "KVM device to check")->capture_default_str();
  cmd->callback([opts, &g] {
    const auto report = doctor::run_all(opts->device);
    if (opts->json)
      fmt::print("{}\n", report.to_json().dump(2));
    else
      fmt::print("{}", report.render_text(::isatty(STDOUT_FILENO) == 1 && !std::getenv("NO_COLOR")));
    g.rc = report.migration_possible() ? 0 : 1;
  });
}

}  // namespace ferry::cli
