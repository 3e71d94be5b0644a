#include "userspace/base/log.hh"

#include <cstdlib>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace ferry {

void init_logging(std::string_view level) {
  std::string name(level);
  if (name.empty()) {
    if (const char* env = std::getenv("FERRY_LOG")) name = env;
  }
  auto logger = spdlog::stderr_color_mt("ferry");
  logger->set_pattern("%^%l%$ %v");
  auto lvl = spdlog::level::from_str(name);
  // from_str maps unknown names to "off"; only accept it when asked for.
  if (lvl == spdlog::level::off && name != "off") lvl = spdlog::level::info;
  logger->set_level(lvl);
  spdlog::set_default_logger(logger);
}

}  // namespace ferry
