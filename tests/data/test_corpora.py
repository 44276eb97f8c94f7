"""Plain-text corpora: UTF-8 reading with errors that name the file, word tokens, vocabularies."""

import pytest

from latentlm.data.corpora import WordVocab, read_lines, read_text, read_utf8, word_tokenize


def test_word_vocab_cutoff_unk_and_errors(tmp_path):
    tokens = word_tokenize("the cat sat. The cat's hat, the end")
    assert tokens[:4] == ["the", "cat", "sat", "."]
    vocab = WordVocab.build([tokens], min_count=2)
    assert vocab.decode(vocab.encode(["the", "zebra"], add_eos=True)) == ["the", "<unk>", "<eos>"]
    vocab.save(tmp_path / "v.json")
    assert WordVocab.load(tmp_path / "v.json").itos == vocab.itos
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt: the corpus is empty"):
        read_text(empty)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_text(tmp_path / "nope.txt")


def test_non_utf8_sources_are_refused_with_file_and_byte_offset(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(ValueError) as err:
        read_text(latin1)
    assert str(err.value) == f"{latin1}: not UTF-8 text (invalid byte 0xe9 at byte offset 3)"
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"ab\x00\x01cd")
    with pytest.raises(ValueError) as err:
        read_lines(binary)
    assert str(err.value) == f"{binary}: not UTF-8 text (NUL byte at byte offset 2; a binary file?)"


def test_read_utf8_keeps_text_and_reads_universal_newlines(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes("Æsop\r\nfables\rend\n".encode())
    assert read_utf8(path) == "Æsop\nfables\nend\n"
    assert read_lines(path) == ["Æsop", "fables", "end"]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert read_utf8(empty) == ""
    with pytest.raises(FileNotFoundError) as err:
        read_utf8(tmp_path / "missing.rst")
    assert str(err.value) == f"{tmp_path / 'missing.rst'}: file not found"
