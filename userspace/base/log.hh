#pragma once
// Logging setup: one stderr logger for the CLI, level from --log-level or
// FERRY_LOG. Library code just calls spdlog::info/debug/...
#include <string_view>

namespace ferry {

// Configures the default spdlog logger. Accepts spdlog level names
// (trace, debug, info, warn, error, critical, off); unknown names keep "info".
void init_logging(std::string_view level);

}  // namespace ferry
