package uffd

import "testing"

// The kernel ABI, pinned: the sizes are sizeof() of the structures of
// include/uapi/linux/userfaultfd.h on x86-64, the request numbers the
// values of its _IO* macros.

func TestABI(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct uffdio_api)", sizeOf[apiArg](), 24},
		{"sizeof(struct uffdio_range)", sizeOf[rangeArg](), 16},
		{"sizeof(struct uffdio_register)", sizeOf[registerArg](), 32},
		{"sizeof(struct uffdio_copy)", sizeOf[copyArg](), 40},
		{"sizeof(struct uffdio_zeropage)", sizeOf[zeroPageArg](), 32},
		{"sizeof(struct uffdio_writeprotect)", sizeOf[writeProtectArg](), 24},
		{"UFFDIO_API", uintptr(reqAPI), 0xc018aa3f},
		{"UFFDIO_REGISTER", uintptr(reqRegister), 0xc020aa00},
		{"UFFDIO_UNREGISTER", uintptr(reqUnregister), 0x8010aa01},
		{"UFFDIO_WAKE", uintptr(reqWake), 0x8010aa02},
		{"UFFDIO_COPY", uintptr(reqCopy), 0xc028aa03},
		{"UFFDIO_ZEROPAGE", uintptr(reqZeroPage), 0xc020aa04},
		{"UFFDIO_WRITEPROTECT", uintptr(reqWriteProtect), 0xc018aa06},
		{"USERFAULTFD_IOC_NEW", reqNewFD, 0xaa00},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

func TestDecode(t *testing.T) {
	msg := make([]byte, msgSize)
	msg[0] = eventPageFault
	msg[8] = pageFaultWrite | pageFaultWP
	copy(msg[16:], []byte{0x00, 0x30, 0x12, 0x00, 0x00, 0x7f, 0, 0})
	copy(msg[24:], []byte{0x39, 0x30, 0, 0})
	f, err := decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	want := Fault{Addr: 0x7f0000123000, Write: true, WP: true, TID: 12345}
	if f != want {
		t.Errorf("decode = %+v, want %+v", f, want)
	}
	msg[0] = 0x13 // UFFD_EVENT_FORK
	if _, err := decode(msg); err == nil {
		t.Error("decode of a fork event: no error")
	}
}
