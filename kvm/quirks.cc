#include "kvm/quirks.hh"

#include <filesystem>

namespace ferry::kvm {

bool kvm_is_pvm(const std::string& sysfs_root) {
  std::error_code ec;
  return std::filesystem::exists(std::filesystem::path(sysfs_root) / "module/kvm_pvm", ec);
}

std::optional<std::string> dirty_ring_unreliable_reason(const std::string& sysfs_root) {
  if (kvm_is_pvm(sysfs_root)) return std::string("PVM (kvm_pvm) drops dirty-ring entries when the ring overflows");
  return std::nullopt;
}

std::optional<std::string> kvm_emulates_guests_reason(const std::string& sysfs_root) {
  if (kvm_is_pvm(sysfs_root))
    return std::string("KVM here is PVM (kvm_pvm): guests that are not PVM-aware run through its instruction emulator");
  return std::nullopt;
}

}  // namespace ferry::kvm
