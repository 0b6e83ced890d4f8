# upcyc: `make` builds every tool into bin/, `make test` runs the suite,
# `make demo` runs the main job on the built-in corpus. See README.md.

CC      ?= cc
NVCC    ?= nvcc
CFLAGS  ?= -O2 -g
BUILD   ?= build
BIN     ?= bin
CUDA    ?= auto

WARN    := -Wall -Wextra -Wshadow -Wno-unused-parameter
# Warnings fail the build under CI (CI=true) or with WERROR=1.
ifneq ($(filter true 1,$(CI) $(WERROR)),)
WARN    += -Werror
endif
ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

ALL_CFLAGS  = -std=c11 -D_GNU_SOURCE $(WARN) -fopenmp -pthread -Ilib $(CFLAGS)
LDLIBS      = -lmsgpackc -lzstd -lpcre2-8 -ljansson -lyaml -lxxhash -lopenblas -lm
ALL_LDFLAGS = -fopenmp -pthread $(LDFLAGS)

LIB_SRC   := $(wildcard lib/*.c)
LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOLS     := $(basename $(notdir $(wildcard tools/*.c)))
TOOL_BINS := $(TOOLS:%=$(BIN)/%)
UNIT_SRC  := $(wildcard tests/unit/*.c)
UNIT_BINS := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
GPU_SRC   := $(wildcard gpu/*.cu)

# The CUDA library is built when nvcc is present (CUDA=0 turns it off).
ifeq ($(CUDA),auto)
CUDA := $(if $(shell command -v $(NVCC) 2>/dev/null),1,0)
endif
ifeq ($(CUDA)$(if $(GPU_SRC),y,n),1y)
GPU_LIB := $(BUILD)/libupcyc_gpu.a
endif

.PHONY: all test demo deps clean check-sanitize
all: $(TOOL_BINS) $(UNIT_BINS) $(GPU_LIB)

$(BUILD)/%.o: %.c $(wildcard lib/*.h) $(wildcard tests/unit/*.h) | $(BUILD)/lib $(BUILD)/tools $(BUILD)/tests/unit
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libupcyc.a: $(LIB_OBJ)
	$(AR) rcs $@ $^

$(BIN)/%: $(BUILD)/tools/%.o $(BUILD)/libupcyc.a | $(BIN)
	$(CC) $(ALL_LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libupcyc.a
	$(CC) $(ALL_LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/gpu/%.o: gpu/%.cu | $(BUILD)/gpu
	$(NVCC) -O2 -Ilib -Xcompiler -Wall,-Wextra -c $< -o $@

$(BUILD)/libupcyc_gpu.a: $(GPU_SRC:%.cu=$(BUILD)/%.o)
	$(AR) rcs $@ $^

$(BUILD)/lib $(BUILD)/tools $(BUILD)/tests/unit $(BUILD)/gpu $(BIN):
	mkdir -p $@

# Installs missing Debian packages when run as root, else prints the command.
deps:
	@scripts/deps

test: deps all
	UPCYC_BIN=$(abspath $(BIN)) UPCYC_UNIT=$(abspath $(BUILD)/tests) bats tests/

# The suite again under AddressSanitizer and UndefinedBehaviorSanitizer.
check-sanitize: deps
	$(MAKE) SANITIZE=1 BUILD=build-san BIN=build-san/bin all
	UPCYC_BIN=$(abspath build-san/bin) UPCYC_UNIT=$(abspath build-san/tests) \
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 bats tests/

demo: deps all
	BIN=$(abspath $(BIN)) pipelines/demo.sh

clean:
	rm -rf build build-san bin
