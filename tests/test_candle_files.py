"""Candle files: reading (CSV, freqtrade JSON), validation errors, download-data over ccxt."""
import gzip
import json
import logging
import tempfile
import unittest
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import bot
import candle_files as cf
from exchange import sim_client
from sim_exchange import SimExchangeServer
from sim_market import SimMarket

TF = 300_000
T0 = 1_704_067_200_000


def candles(n: int = 6, t0: int = T0) -> np.ndarray:
    ts = t0 + np.arange(n) * TF
    close = 100 + np.arange(n) * 0.5
    return np.column_stack([ts, close - 0.25, close + 1.0, close - 1.0, close, 10.0 + np.arange(n)])


CSV = "timestamp,open,high,low,close,volume\n"


class FileCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.dir / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def assertFileError(self, path: Path, line: int, *needles: str):
        with self.assertRaises(cf.CandleFileError) as cm:
            cf.read_candles(path, "5m")
        message = str(cm.exception)
        self.assertTrue(message.startswith(f"{path}:{line}: "), message)
        self.assertNotIn("\n", message)
        self.assertIn(";", message)                # ... what is wrong; how to fix
        for needle in needles:
            self.assertIn(needle, message)


class TestReading(FileCase):
    def test_csv_round_trip_is_exact(self):
        arr = candles()
        arr[2, 1:5] = [0.3, 0.1 + 0.2, 0.1, 0.2]  # 0.30000000000000004 must survive
        path = self.dir / "ETH_USDT-5m.csv"
        cf.write_candles(path, arr)
        self.assertTrue(path.read_text().startswith(CSV))
        np.testing.assert_array_equal(cf.read_candles(path, "5m"), arr)

    def test_freqtrade_json_plain_and_gzipped(self):
        arr = candles()
        rows = [[int(r[0]), *r[1:]] for r in arr.tolist()]
        plain = self.write("ETH_USDT-5m.json", json.dumps(rows))
        zipped = self.write("BTC_USDT-5m.json.gz", gzip.compress(json.dumps(rows).encode()))
        np.testing.assert_array_equal(cf.read_candles(plain, "5m"), arr)
        np.testing.assert_array_equal(cf.read_candles(zipped, "5m"), arr)
        loaded = cf.load_candles(self.dir, "5m")
        self.assertEqual(sorted(loaded), ["BTC/USDT", "ETH/USDT"])

    def test_file_names(self):
        self.assertEqual(cf.parse_file_name("ETH_USDT-5m.json.gz"), ("ETH/USDT", "5m"))
        self.assertEqual(cf.parse_file_name("ETH_BTC-1h.csv"), ("ETH/BTC", "1h"))
        self.assertIsNone(cf.parse_file_name("ETH_USDT_USDT-5m-futures.json"))
        self.assertIsNone(cf.parse_file_name("notes.txt"))
        self.assertEqual(cf.candle_path("d", "ETH/USDT", "5m"), Path("d/ETH_USDT-5m.csv"))

    def test_csv_is_preferred_when_both_formats_exist(self):
        cf.write_candles(self.dir / "ETH_USDT-5m.csv", candles())
        self.write("ETH_USDT-5m.json", "[]")
        with self.assertLogs("candle_files", "WARNING"):
            files = cf.find_candle_files(self.dir, "5m")
        self.assertEqual(files["ETH/USDT"].name, "ETH_USDT-5m.csv")

    def test_gaps_are_reported_not_errors(self):
        arr = np.delete(candles(10), [3, 4, 7], axis=0)
        path = self.dir / "ETH_USDT-5m.csv"
        cf.write_candles(path, arr)
        read = cf.read_candles(path, "5m")
        self.assertEqual(cf.gaps(read, TF), [(T0 + 3 * TF, 2), (T0 + 7 * TF, 1)])

    def test_load_candles_errors(self):
        with self.assertRaisesRegex(cf.CandleFileError, "no 5m candle files"):
            cf.load_candles(self.dir, "5m")
        with self.assertRaisesRegex(cf.CandleFileError, "not a directory"):
            cf.load_candles(self.dir / "nope", "5m")
        cf.write_candles(self.dir / "ETH_USDT-5m.csv", candles())
        with self.assertRaisesRegex(cf.CandleFileError, "no 5m candle file for XRP/USDT .*"
                                                        "XRP_USDT-5m.csv"):
            cf.load_candles(self.dir, "5m", ["ETH/USDT", "XRP/USDT"])


def csv_text(arr: np.ndarray) -> str:
    return CSV + cf.format_rows(arr)


class TestBadFiles(FileCase):
    def lines(self, arr=None) -> list[str]:
        return csv_text(candles() if arr is None else arr).splitlines()

    def bad(self, lines: list[str]) -> Path:
        return self.write("ETH_USDT-5m.csv", "\n".join(lines) + "\n")

    def test_header(self):
        self.assertFileError(self.bad(self.lines()[1:]), 1, "header line is missing")
        rows = self.lines()
        rows[0] = "time,o,h,l,c,v"
        self.assertFileError(self.bad(rows), 1, "expected 'timestamp,open,high,low,close,volume'")

    def test_unparseable_rows(self):
        rows = self.lines()
        rows[3] = rows[3] + ",7"
        self.assertFileError(self.bad(rows), 4, "7 fields, expected 6")
        rows = self.lines()
        rows[4] = rows[4].replace(rows[4].split(",")[2], "abc")
        self.assertFileError(self.bad(rows), 5, "not a number: 'abc'")
        rows = self.lines()
        rows[2] = rows[2].replace(rows[2].split(",")[4], "nan")
        self.assertFileError(self.bad(rows), 3, "close nan is not a finite number")

    def test_unsorted_and_duplicate_timestamps(self):
        rows = self.lines()
        rows[3], rows[4] = rows[4], rows[3]
        self.assertFileError(self.bad(rows), 5, "sort the rows by timestamp")
        arr = candles()
        arr[3, 0] = arr[2, 0]
        self.assertFileError(self.bad(self.lines(arr)), 5, "repeats the line before with "
                                                           "different values")

    def test_prices_and_ranges(self):
        for col, value, line, needle in ((3, 0.0, 3, "non-positive price"),
                                         (1, -5.0, 4, "non-positive price"),
                                         (5, -1.0, 5, "negative volume"),
                                         (2, 50.0, 6, "high 50 is below low")):
            arr = candles()
            arr[line - 2, col] = value
            self.assertFileError(self.bad(self.lines(arr)), line, needle)
        arr = candles()
        arr[1, 4] = arr[1, 2] + 1           # close above high
        self.assertFileError(self.bad(self.lines(arr)), 3, "outside low")

    def test_timestamps_in_seconds_or_off_the_grid(self):
        arr = candles()
        arr[:, 0] //= 1000
        self.assertFileError(self.bad(self.lines(arr)), 2, "looks like seconds",
                             "multiply the timestamps by 1000")
        arr = candles()
        arr[2:, 0] += 60_000
        self.assertFileError(self.bad(self.lines(arr)), 4, "not on the 5m grid")

    def test_json_errors_name_the_line(self):
        path = self.write("ETH_USDT-5m.json", '[[1704067200000, 1, 2, 0.5, 1.5, 10],\n'
                                              ' [1704067500000, 1, 2, 0.5, 1.5, 10],\n'
                                              ' [1704067800000, 1, 2, 0.5]]\n')
        self.assertFileError(path, 3, "row 3", "expected [timestamp, open")
        path = self.write("ETH_USDT-5m.json", '[[1704067200000, 1, 2, 0.5, 1.5, 10],\n'
                                              ' [1704067500000, 1, 2, 0.5, 1.5, 10]\n'
                                              ' [1704067800000, 1, 2, 0.5, 1.5, 10]]\n')
        self.assertFileError(path, 3, "not valid JSON")
        path = self.write("ETH_USDT-5m.json", '[[1704067200000, 1, 2, 0.5, 1.5, 10],\n'
                                              ' [1704067500000, 1, 2, 0.5, 1.5, 10],\n'
                                              ' [1704066900000, 1, 2, 0.5, 1.5, 10]]\n')
        self.assertFileError(path, 3, "is earlier than 1704067500000")

    def test_strict_numbers_and_sane_sizes(self):
        rows = self.lines()
        rows[2] = rows[2].replace(rows[2].split(",")[1], "1_00.5")
        self.assertFileError(self.bad(rows), 3, "not a number: '1_00.5'")
        rows = self.lines()
        rows[2] = "  " + rows[2].replace(",", " , ") + "\r"     # blanks and CRLF are fine
        np.testing.assert_array_equal(cf.read_candles(self.bad(rows), "5m"), candles())
        self.assertFileError(self.bad(self.lines(candles() * [1, 1e16, 1e16, 1e16, 1e16, 1])), 2,
                             "price above 1e+15")
        path = self.write("ETH_USDT-5m.json", "[[" + "9" * 400 + ", 1, 2, 0.5, 1.5, 10]]")
        self.assertFileError(path, 1, "too large")

    def test_empty_and_unreadable_files(self):
        for name, content, needle in (("ETH_USDT-5m.csv", b"", "empty"),
                                      ("ETH_USDT-5m.csv.gz", b"plain text", "not a readable gzip"),
                                      ("ETH_USDT-5m.csv.gz", gzip.compress(b"x" * 999)[:-9],
                                       "not a readable gzip")):
            with self.subTest(name=name, content=content[:10]):
                path = self.write(name, content)
                with self.assertRaisesRegex(cf.CandleFileError, needle):
                    cf.read_candles(path, "5m")
                path.unlink()
        header_only = self.write("ETH_USDT-5m.csv", CSV)
        self.assertEqual(len(cf.read_candles(header_only, "5m")), 0)       # the file API
        with self.assertRaisesRegex(cf.CandleFileError, "no candles, only the header"):
            cf.load_candles(self.dir, "5m")                                  # what a run needs

    def test_strict_timeframes(self):
        self.assertEqual(cf.timeframe_to_ms(" 15m "), 900_000)
        for bad in ("\u0665m", "0m", "5", "m5", "1y", "367d", "1234567m"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                cf.timeframe_to_ms(bad)

    def test_exact_duplicates_are_dropped_with_a_warning(self):
        rows = self.lines()
        rows.insert(3, rows[2])
        rows.insert(6, rows[5])
        path = self.bad(rows)
        with self.assertLogs("candle_files", "WARNING") as logs:
            arr = cf.read_candles(path, "5m")
        np.testing.assert_array_equal(arr, candles())
        self.assertIn("dropped 2 exact duplicate row(s)", logs.output[0])
        self.assertIn(f"{path}:4", logs.output[0])

    def test_a_torn_last_line_is_ignored_with_a_warning(self):
        path = self.write("ETH_USDT-5m.csv", csv_text(candles()) + "1704069000000,100.5,1")
        with self.assertLogs("candle_files", "WARNING") as logs:
            arr = cf.read_candles(path, "5m")
        np.testing.assert_array_equal(arr, candles())
        self.assertIn("cut short", logs.output[0])
        # ... but the same line inside the file is an error
        text = csv_text(candles()).splitlines()
        text.insert(3, "1704069000000,100.5,1")
        self.assertFileError(self.bad(text), 4, "3 fields")


class RootLogging:
    """Restores the root logger after a test that runs a CLI command (which configures it)."""

    def setUp(self):
        root = logging.getLogger()
        saved = (root.handlers[:], root.level)
        self.addCleanup(lambda: (setattr(root, "handlers", saved[0]), root.setLevel(saved[1])))
        super().setUp()


NOW = T0 + 10 * 86_400_000 + 137_000    # the frozen market clock: mid-candle


class TestDownload(FileCase):
    @classmethod
    def setUpClass(cls):
        cls.market = SimMarket(pairs=3, seed=2, speed=0.0, start_ms=NOW)   # clock stands still
        cls.server = SimExchangeServer(cls.market).start()
        cls.client = sim_client(cls.server, cls.market, "sim-key", "sim-secret",
                                timeout_ms=5000, attempts=3, base_delay=0.01, max_delay=0.05)
        cls.client.load_markets()
        cls.symbols = cls.market.symbols[:2]

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def reference(self, symbol: str, since: int) -> np.ndarray:
        """The closed candles straight from the market, for comparison."""
        rows = []
        while True:
            page = self.market.klines(symbol.replace("/", ""), "5m", since, None, 1000)
            page = [r for r in page if r[0] + TF <= NOW]
            if not page:
                break
            rows += page
            since = page[-1][0] + TF
        return np.array([[float(x) for x in r[:6]] for r in rows])

    def file(self, symbol: str) -> np.ndarray:
        return cf.read_candles(cf.candle_path(self.dir, symbol, "5m"), "5m")

    def test_pages_resumes_after_an_interruption_and_never_duplicates(self):
        pages = []

        def stop_after_three(slots, total):
            pages.append(slots)
            if len(pages) == 3:
                raise KeyboardInterrupt

        with self.assertRaises(KeyboardInterrupt):
            cf.download(self.client, self.symbols, "5m", 2, self.dir, stop_after_three,
                        limit=100)
        partial = self.file(self.symbols[0])
        self.assertEqual(len(partial), 300)                   # three whole pages, fsynced
        self.assertFalse(cf.candle_path(self.dir, self.symbols[1], "5m").exists())
        self.server.reset_counters()
        results = cf.download(self.client, self.symbols, "5m", 2, self.dir, limit=100)
        start = (NOW - 2 * 86_400_000) // TF * TF
        for symbol, result in zip(self.symbols, results):
            arr = self.file(symbol)
            np.testing.assert_array_equal(arr, self.reference(symbol, start))
            self.assertEqual(len(arr), 576)                   # two days of closed 5m candles
            self.assertTrue((np.diff(arr[:, 0]) == TF).all())
            self.assertLessEqual(arr[-1, 0] + TF, NOW)        # only closed candles
        self.assertEqual(results[0].written, 276)             # resumed after the 300 stored
        self.assertEqual(self.server.request_count("/api/v3/klines"), 3 + 6)
        again = cf.download(self.client, self.symbols, "5m", 2, self.dir, limit=100)
        self.assertEqual([r.written for r in again], [0, 0])   # nothing new: nothing written

    def test_a_torn_write_is_cut_off_and_fetched_again(self):
        cf.download(self.client, self.symbols[:1], "5m", 1, self.dir, limit=100)
        path = cf.candle_path(self.dir, self.symbols[0], "5m")
        good = path.read_bytes()
        lines = good.splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:-5]) + lines[-5][:9])    # crash mid-line
        with self.assertLogs("candle_files", "WARNING") as logs:
            result = cf.download(self.client, self.symbols[:1], "5m", 1, self.dir, limit=100)[0]
        self.assertIn("incomplete last line", "\n".join(logs.output))
        self.assertEqual(result.written, 5)
        self.assertEqual(path.read_bytes(), good)

    def test_more_days_fetch_the_earlier_history(self):
        cf.download(self.client, self.symbols[:1], "5m", 1, self.dir, limit=1000)
        result = cf.download(self.client, self.symbols[:1], "5m", 3, self.dir, limit=1000)[0]
        arr = self.file(self.symbols[0])
        start = (NOW - 3 * 86_400_000) // TF * TF
        np.testing.assert_array_equal(arr, self.reference(self.symbols[0], start))
        self.assertEqual(result.written, 576)
        self.assertEqual(result.first_ms, start)

    def test_progress_covers_the_whole_job(self):
        seen = []
        cf.download(self.client, self.symbols, "5m", 1, self.dir,
                    lambda slots, total: seen.append((slots, total)), limit=100)
        self.assertEqual(sum(s for s, _ in seen), seen[0][1])
        self.assertEqual(seen[0][1], 2 * 288)


class TestDownloadCommand(RootLogging, FileCase):
    def invoke(self, *args: str):
        env = {"DATA_DIR": str(self.dir), "SIM_PAIRS": "3", "EXCHANGE": "simulated"}
        if "--data-dir" not in args:
            args += ("--data-dir", str(self.dir / "data"))
        return CliRunner().invoke(bot.download_data_command, list(args), env=env,
                                  obj={"env_file": None})

    def test_simulated_download(self):
        out = self.dir / "data"
        res = self.invoke("--exchange", "simulated", "--pairs", "BTC/USDT,eth/usdt", "--days",
                          "0.5", "--data-dir", str(out))
        self.assertEqual(res.exit_code, 0, res.output)
        for name in ("BTC_USDT-5m.csv", "ETH_USDT-5m.csv"):
            arr = cf.read_candles(out / name, "5m")
            self.assertGreaterEqual(len(arr), 143)

    def test_user_errors_are_one_line_and_exit_2(self):
        cases = [("--exchange", "simulated", "--pairs", "FOO/USDT"),
                 ("--exchange", "no_such_exchange", "--pairs", "BTC/USDT"),
                 ("--exchange", "simulated"),
                 ("--exchange", "simulated", "--pairs", "BTC/USDT", "--timeframe", "7x"),
                 ("--exchange", "simulated", "--pairs", "BTC/USDT", "--timeframe", "7m"),
                 ("--exchange", "simulated", "--pairs", "BTC/USDT", "--data-dir",
                  str(self.write("a-file", "x")))]
        for args in cases:
            with self.subTest(args=args):
                res = self.invoke(*args)
                self.assertEqual(res.exit_code, 2, res.output)
                self.assertEqual(len(res.output.strip().splitlines()), 1, res.output)
                self.assertTrue(res.output.startswith("error: "), res.output)
        self.assertIn("--pairs: FOO/USDT is not a market", self.invoke(*cases[0]).output)
        self.assertIn("--timeframe 7m is not offered", self.invoke(*cases[4]).output)

    def test_the_summary_names_each_file(self):
        res = self.invoke("--exchange", "simulated", "--pairs", "BTC/USDT", "--days", "0.5")
        self.assertEqual(res.exit_code, 0, res.output)
        line = next(x for x in res.output.splitlines() if x.startswith("BTC/USDT"))
        self.assertRegex(line, r"^BTC/USDT +\+ *\d+ candles in +\d+ page\(s\)  .*BTC_USDT-5m\.csv  "
                               r"\(\d{4}-\d\d-\d\d \d\d:\d\d \.\. .* UTC\)$")


if __name__ == "__main__":
    logging.disable(logging.NOTSET)
    unittest.main()
