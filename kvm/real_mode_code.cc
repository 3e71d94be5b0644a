#include "kvm/real_mode_code.hh"

#include "kvm/vcpu.hh"

#include <array>

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

std::vector<std::uint8_t> real_mode_write_range(std::uint32_t first_gpa, std::uint32_t pages, std::uint8_t value) {
  auto le32 = [](std::uint32_t v) {
    return std::array<std::uint8_t, 4>{static_cast<std::uint8_t>(v), static_cast<std::uint8_t>(v >> 8),
                                       static_cast<std::uint8_t>(v >> 16), static_cast<std::uint8_t>(v >> 24)};
  };
  const auto a = le32(first_gpa), n = le32(pages);
  // One initializer list, not a run of insert()s: g++ 12 at -O3 reports a
  // false -Wstringop-overflow for growing a vector by small literal lists.
  return std::vector<std::uint8_t>{
      0x66, 0xBB, a[0], a[1], a[2], a[3],        // mov ebx, first_gpa
      0x66, 0xB9, n[0], n[1], n[2], n[3],        // mov ecx, pages
      0xB0, value,                               // mov al, value
      0x67, 0x88, 0x03,                          // loop: mov [ebx], al
      0x66, 0x81, 0xC3, 0x00, 0x10, 0x00, 0x00,  //   add ebx, 4096
      0x66, 0x49,                                //   dec ecx
      0x75, 0xF2,                                //   jnz loop (-14)
      0xF4,                                      // hlt
  };
}

Status real_mode_enter(Vcpu& vcpu, std::uint64_t code_gpa) {
  auto sregs = vcpu.get_sregs();
  if (!sregs) return std::unexpected(sregs.error());
  // Reset state has CS base 0xffff0000 (the BIOS reset vector); flatten it.
  sregs->cs.base = 0;
  sregs->cs.selector = 0;
  sregs->ds.base = 0;
  sregs->ds.selector = 0;
  sregs->ds.limit = 0xffffffff;
  sregs->ds.g = 1;
  if (auto ok = vcpu.set_sregs(*sregs); !ok) return ok;
  kvm_regs regs{};
  regs.rip = code_gpa;
  regs.rflags = 0x2;  // bit 1 is reserved-as-one
  return vcpu.set_regs(regs);
}

}  // namespace ferry::kvm
