// Gapless playback of the character's voice through an AudioSource, with a small jitter buffer,
// the lip-sync frame of whatever is playing right now, and playback reports back to the server.
using System.Collections.Generic;
using UnityEngine;

namespace Koe
{
    [RequireComponent(typeof(AudioSource))]
    public class KoeAudioPlayer : MonoBehaviour
    {
        [Tooltip("Audio buffered before playback starts, so network jitter does not cause gaps")]
        public float jitterSeconds = 0.06f;
        [Tooltip("How often playback positions go to the server")]
        public float reportEverySeconds = 0.2f;

        public KoeClient Client { get; set; }
        public int SampleRate { get; set; } = 48000;
        public float Volume { get; private set; }            // mouth opening, 0..1
        public float[] Vowels { get; } = new float[5];        // A, I, U, E, O weights

        class Segment
        {
            public uint Id;
            public string Text, Emotion, Expression;
            public long Start = -1, End = -1;  // positions in the sample stream; End once the last frame came
            public bool Announced, Reported;
        }

        class LipFrames { public long Start; public float[] Volume; public float[][] Vowels; }

        // The audio thread reads `buffer`; everything shared with it is guarded by `sync`.
        readonly object sync = new object();
        readonly Queue<float> buffer = new Queue<float>();
        long written, played;   // samples queued and samples played since the start
        bool playing;
        readonly List<Segment> segments = new List<Segment>();
        readonly Dictionary<(uint, uint), (float[], float[][])> pendingLips = new Dictionary<(uint, uint), (float[], float[][])>();
        readonly List<LipFrames> lips = new List<LipFrames>();
        float nextReport;
        int outputRate;

        void Awake()
        {
            outputRate = AudioSettings.outputSampleRate;
            var source = GetComponent<AudioSource>();
            source.playOnAwake = true;
            source.loop = true;
            source.clip = AudioClip.Create("koe-voice", outputRate, 1, outputRate, false);
            source.Play();  // OnAudioFilterRead below replaces the clip's silence with the voice
        }

        public void StartSegment(uint id, string text, string emotion, string expression)
        {
            lock (sync) segments.Add(new Segment { Id = id, Text = text, Emotion = emotion, Expression = expression });
        }

        public void AddLipSync(uint segment, uint sequence, float[] volume, float[][] vowels)
        {
            pendingLips[(segment, sequence)] = (volume, vowels);  // the audio frame follows
        }

        public void Enqueue(uint segmentId, uint sequence, float[] samples, bool last)
        {
            lock (sync)
            {
                var segment = segments.Find(s => s.Id == segmentId);
                if (segment == null) return;  // cleared by a barge-in
                if (segment.Start < 0) segment.Start = written;
                if (pendingLips.TryGetValue((segmentId, sequence), out var lip))
                {
                    pendingLips.Remove((segmentId, sequence));
                    lips.Add(new LipFrames { Start = written, Volume = lip.Item1, Vowels = lip.Item2 });
                }
                foreach (var s in samples) buffer.Enqueue(s);
                written += samples.Length;
                if (last) segment.End = written;
                if (!playing && (last || buffer.Count >= jitterSeconds * SampleRate)) playing = true;
            }
        }

        public void Clear()
        {
            lock (sync)
            {
                buffer.Clear();
                played = written;
                playing = false;
                segments.Clear();
                lips.Clear();
                pendingLips.Clear();
                Volume = 0;
                System.Array.Clear(Vowels, 0, 5);
            }
        }

        /// <summary>The segment playing now and how far into it (ms); false when nothing plays.</summary>
        public bool CurrentSegment(out uint id, out int playedMs)
        {
            lock (sync)
            {
                foreach (var s in segments)
                {
                    if (s.Start >= 0 && played >= s.Start && (s.End < 0 || played < s.End))
                    {
                        id = s.Id;
                        playedMs = (int)((played - s.Start) * 1000 / SampleRate);
                        return true;
                    }
                }
            }
            id = 0;
            playedMs = 0;
            return false;
        }

        void Update()
        {
            var started = new List<Segment>();
            var reports = new List<(uint, int, bool)>();
            lock (sync)
            {
                UpdateMouth();
                bool due = Time.unscaledTime >= nextReport;
                if (due) nextReport = Time.unscaledTime + reportEverySeconds;
                foreach (var s in segments)
                {
                    if (s.Start < 0 || played < s.Start) continue;
                    if (!s.Announced) { s.Announced = true; started.Add(s); }
                    bool finished = s.End >= 0 && played >= s.End;
                    if (finished && !s.Reported) { s.Reported = true; reports.Add((s.Id, (int)((s.End - s.Start) * 1000 / SampleRate), true)); }
                    else if (!finished && due) reports.Add((s.Id, (int)((played - s.Start) * 1000 / SampleRate), false));
                }
                segments.RemoveAll(s => s.Reported);
            }
            foreach (var s in started) Client?.SegmentStartedPlaying(s.Text, s.Emotion, s.Expression);
            foreach (var r in reports) Client?.ReportProgress(r.Item1, r.Item2, r.Item3);
        }

        void UpdateMouth()
        {
            lips.RemoveAll(l => played >= l.Start + l.Volume.Length * SampleRate / 50);
            var frames = lips.Find(l => played >= l.Start);
            if (frames == null) { Volume = 0; System.Array.Clear(Vowels, 0, 5); return; }
            int i = Mathf.Min(frames.Volume.Length - 1, (int)((played - frames.Start) * 50 / SampleRate));  // 20 ms frames
            Volume = frames.Volume[i];
            for (int k = 0; k < 5; k++) Vowels[k] = frames.Vowels[i][k];
        }

        // The audio thread: copy queued samples into the output (every channel), silence when starved.
        // `SampleRate` must equal the output rate (KoeClient asks the server for it).
        void OnAudioFilterRead(float[] data, int channels)
        {
            lock (sync)
            {
                for (int i = 0; i < data.Length; i += channels)
                {
                    float sample = 0f;
                    if (playing && buffer.Count > 0) { sample = buffer.Dequeue(); played++; }
                    else if (playing) playing = false;  // starved: wait for the jitter buffer to refill
                    for (int c = 0; c < channels; c++) data[i + c] = sample;
                }
            }
        }
    }
}
