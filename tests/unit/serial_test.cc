// The 8250/16550A model as a guest driver sees it: register semantics,
// the divisor latch, interrupts, loopback, and state round trips.
#include <gtest/gtest.h>

#include <string>

#include "kvm/devices/uart/serial.hh"

namespace ferry::kvm {
namespace {

struct Uart {
  std::string out;
  Serial dev{[this](std::string_view s) { out += s; }};
};

TEST(Serial, TransmitGoesToTheSinkAndTheLineIsAlwaysReady) {
  Uart u;
  for (char c : std::string("hi\n")) EXPECT_TRUE(u.dev.write(0, static_cast<std::uint8_t>(c)));
  EXPECT_EQ(u.out, "hi\n");
  EXPECT_EQ(u.dev.read(5) & 0x60, 0x60) << "THRE and TEMT: the guest may always send";
  EXPECT_EQ(u.dev.read(5) & 0x01, 0) << "no data ready";
  EXPECT_FALSE(u.dev.write(8, 0)) << "offset 8 is not ours";
}

TEST(Serial, DivisorLatchShadowsDataAndIer) {
  Uart u;
  u.dev.write(3, 0x80);  // DLAB
  u.dev.write(0, 0x01);  // 115200 baud
  u.dev.write(1, 0x00);
  EXPECT_EQ(u.dev.read(0), 0x01);
  EXPECT_EQ(u.out, "") << "a divisor write is not a character";
  u.dev.write(3, 0x03);  // 8N1, DLAB off
  EXPECT_EQ(u.dev.read(1), 0x00) << "IER, not DLM, once DLAB is clear";
  EXPECT_EQ(u.dev.save().dll, 0x01);
}

TEST(Serial, ReceiveQueueDataReadyAndRxInterrupt) {
  Uart u;
  u.dev.enqueue_input("ab");
  EXPECT_EQ(u.dev.read(5) & 0x01, 0x01);
  EXPECT_FALSE(u.dev.irq_level()) << "interrupts not enabled yet";
  u.dev.write(1, 0x01);  // enable RX interrupt
  EXPECT_TRUE(u.dev.irq_level());
  EXPECT_EQ(u.dev.read(2) & 0x0f, 0x04) << "IIR: received data available";
  EXPECT_EQ(u.dev.read(0), 'a');
  EXPECT_EQ(u.dev.read(0), 'b');
  EXPECT_EQ(u.dev.read(5) & 0x01, 0);
  EXPECT_FALSE(u.dev.irq_level());
  EXPECT_EQ(u.dev.read(2) & 0x0f, 0x01) << "IIR: nothing pending";
}

TEST(Serial, ThreInterruptIsRaisedOnEnableAndAcknowledgedByReadingIir) {
  Uart u;
  u.dev.write(1, 0x02);  // enable THRE: the empty register interrupts at once
  EXPECT_TRUE(u.dev.irq_level());
  EXPECT_EQ(u.dev.read(2) & 0x0f, 0x02);
  EXPECT_FALSE(u.dev.irq_level()) << "reading IIR acknowledged it";
  u.dev.write(0, 'x');  // sending re-arms it
  EXPECT_TRUE(u.dev.irq_level());
}

TEST(Serial, LoopbackFeedsTransmitIntoReceive) {
  Uart u;
  u.dev.write(4, 0x10 | 0x0b);  // loop + DTR, RTS, OUT2
  u.dev.write(0, 'z');
  EXPECT_EQ(u.out, "");
  EXPECT_EQ(u.dev.read(0), 'z');
  EXPECT_EQ(u.dev.read(6) & 0xf0, 0xb0) << "MSR mirrors MCR in loopback";
}

TEST(Serial, StateRoundTripsThroughTheEncoding) {
  Uart u;
  u.dev.write(3, 0x83);
  u.dev.write(0, 0x01);
  u.dev.write(3, 0x03);
  u.dev.write(1, 0x03);
  u.dev.write(7, 0x5a);
  u.dev.enqueue_input("queued");
  const auto saved = u.dev.save();
  auto decoded = decode_serial_state(encode_serial_state(saved));
  ASSERT_TRUE(decoded) << decoded.error().what();
  EXPECT_EQ(*decoded, saved);
  Uart v;
  v.dev.restore(*decoded);
  EXPECT_EQ(v.dev.read(7), 0x5a);
  EXPECT_EQ(v.dev.read(0), 'q');
  EXPECT_TRUE(v.dev.irq_level());
}

TEST(Serial, DecoderRejectsBadInput) {
  auto bytes = encode_serial_state(SerialState{});
  auto truncated = decode_serial_state(std::span(bytes).first(bytes.size() - 1));
  ASSERT_FALSE(truncated);
  EXPECT_NE(truncated.error().message().find("serial state: truncated"), std::string::npos) << truncated.error().what();
  auto extra = bytes;
  extra.push_back(std::byte{0});
  EXPECT_FALSE(decode_serial_state(extra));
  auto version = bytes;
  version[0] = std::byte{9};
  auto v = decode_serial_state(version);
  ASSERT_FALSE(v);
  EXPECT_EQ(v.error().message(), "serial state: version 9 unsupported (expected 1)");
  auto flag = bytes;
  flag[10] = std::byte{7};  // THRE flag after version(4) + 6 registers
  EXPECT_FALSE(decode_serial_state(flag));
}

}  // namespace
}  // namespace ferry::kvm
