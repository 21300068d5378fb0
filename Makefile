# The README's commands. Each installs what it needs first (quick when already installed).
PYTHON ?= python3
NB ?= notebooks/[0-9]*.ipynb

.PHONY: install book test gpu-dry-run notebooks checkpoints gpu-checkpoints assignments colab-check clean

install:
	PYTHON=$(PYTHON) bash scripts/install.sh

# The HTML book in _build/html; the notebooks are shown with their committed outputs (see _config.yml).
book: install
	jupyter-book build . -W -n --keep-going

# Unit tests, then every notebook against its committed outputs (smoke profile: see notebooks/conftest.py).
# Both always run; the target fails if either does.
test: install
	status=0; \
	$(PYTHON) -m pytest tests/ || status=1; \
	$(PYTHON) -m pytest --nbval notebooks/ || status=1; \
	exit $$status

# Every chapter's gpu-profile branches on the CPU, sizes cut by DIFFUSION_DRY_RUN (part of `make test`).
gpu-dry-run: install
	$(PYTHON) -m pytest tests/test_gpu_dry_run.py

# Re-execute notebooks in the cpu profile so the committed files carry real outputs
# (all of them, or one: `make notebooks NB=notebooks/04_training.ipynb`), their Markdown made plain first.
notebooks: install
	$(PYTHON) scripts/plain_markup.py $(NB)
	$(PYTHON) scripts/sync_first_cell.py $(NB)
	$(PYTHON) scripts/execute_notebooks.py --profile cpu $(NB)

# Train, ship and measure the book's models into checkpoints/ (scripts/train_checkpoints.sh): resumable;
# hours on 2 CPU cores, minutes on a GPU with DEVICE=cuda; FID=1 adds each model's FID-2k.
checkpoints: install
	PYTHON=$(PYTHON) DEVICE=$(or $(DEVICE),cpu) FID=$(or $(FID),0) bash scripts/train_checkpoints.sh

# On a machine with a GPU (about 9 minutes on one H200; no install step: it needs torch, torchvision,
# torchmetrics, PyYAML, tqdm and Fashion-MNIST under $DIFFUSION_DATA): train, ship, sample and time the
# models into runs/gpu/pack; back here, `bash scripts/unpack_gpu_checkpoints.sh PACK [NAME ...]`.
gpu-checkpoints:
	PYTHON=$(PYTHON) bash scripts/gpu_checkpoints.sh

# Student notebooks and autograders from every chapter's exercises (otter assign; offline, runs
# nothing): assignments/student/<chapter>/, assignments/autograder/<chapter>/, and the student
# notebooks again in exercises/, committed, which the chapters link on Colab (see book/teachers.md).
assignments: install
	$(PYTHON) scripts/make_assignments.py

# Colab compatibility (not in CI): Python 3.13 venv with Colab's versions, the notebooks' own
# install cell, the smoke notebooks and unit tests, then chapter 05 (cpu profile) from that install
# with the shipped models served on 127.0.0.1.
colab-check:
	bash scripts/colab_check.sh

clean:
	rm -rf _build
