#include "kvm/real_mode_code.hh"

#include "kvm/vcpu.hh"

namespace ferry::kvm {

std::uint8_t real_mode_marker(std::uint64_t gfn, std::uint64_t round) {
  return static_cast<std::uint8_t>(((gfn * 7 + round * 13) & 0xfe) | 1);
}

std::vector<std::uint8_t> real_mode_write_pages(const std::vector<std::uint64_t>& gfns, std::uint64_t round,
                                                std::uint16_t byte_offset) {
  std::vector<std::uint8_t> code;
  const auto lo = static_cast<std::uint8_t>(byte_offset), hi = static_cast<std::uint8_t>(byte_offset >> 8);
  for (std::uint64_t gfn : gfns) {
    const auto seg = static_cast<std::uint16_t>(gfn << 8);  // gfn * 4096 / 16
    code.insert(code.end(), {0xB8, static_cast<std::uint8_t>(seg), static_cast<std::uint8_t>(seg >> 8)});  // mov ax, seg
    code.insert(code.end(), {0x8E, 0xD8});                                                              // mov ds, ax
    code.insert(code.end(), {0xC6, 0x06, lo, hi, real_mode_marker(gfn, round)});                        // mov byte [off], imm8
  }
  code.push_back(0xF4);  // hlt
  return code;
}

Status real_mode_enter(Vcpu& vcpu, std::uint64_t code_gpa) {
  auto sregs = vcpu.get_sregs();
  if (!sregs) return std::unexpected(sregs.error());
  // Reset state has CS base 0xffff0000 (the BIOS reset vector); flatten it.
  sregs->cs.base = 0;
  sregs->cs.selector = 0;
  if (auto ok = vcpu.set_sregs(*sregs); !ok) return ok;
  kvm_regs regs{};
  regs.rip = code_gpa;
  regs.rflags = 0x2;  // bit 1 is reserved-as-one
  return vcpu.set_regs(regs);
}

}  // namespace ferry::kvm
