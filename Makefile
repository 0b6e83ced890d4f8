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

# OpenBLAS's OpenMP build (Debian's libopenblas-openmp-dev), so BLAS and
# the kernels share one OpenMP team: the pthreads build keeps a second pool
# whose threads fight OpenMP's for the cores (bench/train, bench/serve).
MULTIARCH  := $(shell $(CC) -print-multiarch 2>/dev/null)
BLAS_DIR   ?= /usr/lib/$(MULTIARCH)/openblas-openmp
BLAS_CFLAGS = -I/usr/include/$(MULTIARCH)/openblas-openmp
BLAS_LIBS   = -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas

ALL_CFLAGS  = -std=c11 -D_GNU_SOURCE $(WARN) -fopenmp -pthread -Ilib $(BLAS_CFLAGS) $(CFLAGS)
LDLIBS      = -lmsgpackc -lzstd -lpcre2-8 -ljansson -lyaml -lxxhash $(BLAS_LIBS) -lm
# MPI (lib/dist.c, data-parallel train): its headers for dist.o, its library
# only for the programs that join a job; the other tools never pull dist.o.
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null || echo -lmpi)
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
# One architecture by default (H100/H200), to keep the build short.
CUDA_HOME ?= /usr/local/cuda
GPU_ARCH  ?= sm_90
NVCC_FLAGS := -O2 -arch=$(GPU_ARCH) -Ilib -Xcompiler -Wall,-Wextra,-Wshadow,-Wno-unused-parameter \
	$(if $(filter -Werror,$(WARN)),-Werror all-warnings)
# Tools and unit tests link the GPU library: lib/backend.c refers to
# kernels_cuda and kernels_cuda_allreduce_sum weakly, --undefined pulls them in; libupcyc.a again after it
# for what the GPU code calls (upc_fail).
GPU_UNDEFINED := -Wl,--undefined=kernels_cuda -Wl,--undefined=kernels_cuda_allreduce_sum
ALL_LDFLAGS += $(GPU_UNDEFINED)
GPU_SYSLIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++
GPU_LDLIBS  := $(BUILD)/libupcyc.a $(GPU_SYSLIBS)
endif

.PHONY: all test demo deps clean check-sanitize gpu-check emu
all: $(TOOL_BINS) $(UNIT_BINS) $(GPU_LIB) $(BUILD)/flags.sh

# What bench/ scripts compile their harnesses with (they source this file).
$(BUILD)/flags.sh: Makefile | $(BUILD)/lib
	printf "UPCYC_CFLAGS='%s'\nUPCYC_LIBS='%s'\nUPCYC_GPU_LIBS='%s'\n" \
	    "-std=c11 -D_GNU_SOURCE -O2 -fopenmp -pthread -I$(abspath lib) $(BLAS_CFLAGS)" \
	    "$(abspath $(BUILD))/libupcyc.a $(LDLIBS)" \
	    "$(GPU_UNDEFINED) $(addprefix $(abspath $(BUILD))/,libupcyc.a libupcyc_gpu.a libupcyc.a) $(LDLIBS) $(GPU_SYSLIBS)" > $@

$(BUILD)/%.o: %.c $(wildcard lib/*.h) $(wildcard tests/unit/*.h) | $(BUILD)/lib $(BUILD)/tools $(BUILD)/tests/unit
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libupcyc.a: $(LIB_OBJ)
	$(AR) rcs $@ $^

$(BIN)/%: $(BUILD)/tools/%.o $(BUILD)/libupcyc.a $(GPU_LIB) | $(BIN)
	$(CC) $(ALL_LDFLAGS) $^ $(LDLIBS) $(GPU_LDLIBS) -o $@

$(BUILD)/lib/dist.o: ALL_CFLAGS += $(MPI_CFLAGS)
$(BIN)/train: LDLIBS += $(MPI_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(BUILD)/libupcyc.a $(GPU_LIB)
	$(CC) $(ALL_LDFLAGS) $^ $(LDLIBS) $(GPU_LDLIBS) -o $@

$(BUILD)/gpu/%.o: gpu/%.cu $(wildcard gpu/*.cuh) lib/kernels.h lib/kernels_math.h lib/util.h | $(BUILD)/gpu
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(BUILD)/libupcyc_gpu.a: $(GPU_SRC:%.cu=$(BUILD)/%.o)
	$(AR) rcs $@ $^

$(BUILD)/lib $(BUILD)/tools $(BUILD)/tests/unit $(BUILD)/gpu $(BIN):
	mkdir -p $@

# Installs missing Debian packages when run as root, else prints the command.
deps:
	@scripts/deps

test: deps all emu
	UPCYC_BIN=$(abspath $(BIN)) UPCYC_UNIT=$(abspath $(BUILD)/tests) UPCYC_EMU=$(abspath $(BUILD)/emu/tests) \
	UPCYC_CUDA_BIN=$(abspath $(BUILD)/emu/bin) bats tests/

# The CUDA sources (gpu/*.cu) on an emulated device (tests/emu: host threads
# for CUDA threads, OpenBLAS for cuBLAS), so that tests/emu.bats runs the GPU
# harnesses and tests/cuda_tools.bats the tools with --device cuda without a
# GPU: builds $(BUILD)/emu/ from this build's libupcyc.a.
emu: $(BUILD)/libupcyc.a
	BUILD=$(BUILD) SANITIZE=$(SANITIZE) NO_TESTS=1 scripts/check-emu

# The suite again under AddressSanitizer and UndefinedBehaviorSanitizer (the
# emulated 50-step training comparison, minutes under ASan, only in make test).
check-sanitize: deps
	$(MAKE) SANITIZE=1 BUILD=build-san BIN=build-san/bin all emu
	UPCYC_BIN=$(abspath build-san/bin) UPCYC_UNIT=$(abspath build-san/tests) UPCYC_EMU=$(abspath build-san/emu/tests) \
	UPCYC_CUDA_BIN=$(abspath build-san/emu/bin) \
	UPCYC_EMU_TRAIN=0 ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 bats tests/

# The CUDA backend against the CPU on a GPU machine, then bench/gpu (builds
# with CUDA=1 into build-gpu/; without a GPU it builds, says so, exits 0).
gpu-check:
	scripts/gpu-check

demo: deps all
	BIN=$(abspath $(BIN)) pipelines/demo.sh

clean:
	rm -rf build build-san bin
