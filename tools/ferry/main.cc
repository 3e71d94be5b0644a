// The ferry CLI. Subcommands live one per file (cmd_*.cc); main only wires
// them together and sets up logging.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "userspace/base/log.hh"
#include "tools/ferry/commands.hh"

int main(int argc, char** argv) {
  ferry::cli::Globals g;
  CLI::App app{"Ferry: live migration of KVM virtual machines.\n"
               "Start with `ferry doctor` (can this host migrate?) and `ferry demo` (see it work)."};
  app.name("ferry");
  app.set_version_flag("--version", std::string("ferry ") + FERRY_VERSION);
  app.add_option("--log-level", g.log_level, "trace, debug, info, warn, error, off (default: info; env FERRY_LOG)");
  app.require_subcommand(1);
  ferry::cli::add_doctor(app, g);
  ferry::cli::add_demo(app, g);
  ferry::cli::add_run(app, g);
  ferry::cli::add_restore(app, g);
  ferry::cli::add_vm_control(app, g);
  ferry::cli::add_receive(app, g);
  ferry::cli::add_migrate(app, g);
  ferry::cli::add_bench(app, g);
  ferry::cli::add_bench_transport(app, g);
  ferry::cli::add_trace(app, g);
  ferry::cli::add_bench_trace(app, g);
  app.parse_complete_callback([&] { ferry::init_logging(g.log_level); });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return g.rc;
}
