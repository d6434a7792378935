"""Late ticks after the PLC link handed the write loop the GIL: how long before the tick
the write loop had last posted a block to the link (an extra block just before a tick would
put its exchange's reply on the tick), and the link's wake-ups around such ticks.
Input as for sched_probe.py:  python3 linkpost.py NAME
"""
import re,sys,bisect,collections
name=sys.argv[1]
names={}
for line in open(f'{name}.threads'):
    m=re.match(r'Thread (\d+) \(\w+\): "(.*)"',line)
    if m: names[int(m.group(1))]=m.group(2)
tid={v:k for k,v in names.items()}
WAKE=re.compile(r"\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/\d+)?\]\s+awakened: .*\[(\d+)(?:/\d+)?\]")
SW=re.compile(r"\s*([\d.]+)\s+\[(\d+)\]\s+(.*?)\[(\d+)(?:/\d+)?\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")
wl=tid['write-loop']; lk=tid['plc-link']
wlw=[];posts=[];wlseg=[]
for line in open(f'{name}.thw'):
    m=WAKE.match(line)
    if m:
        t=float(m.group(1))*1000; waker=int(m.group(4)); target=int(m.group(5))
        if target==wl: wlw.append((t,names.get(waker,m.group(3).strip())))
        if target==lk and waker==wl: posts.append(t)
        continue
    m=SW.match(line)
    if m and int(m.group(4))==wl: wlseg.append((float(m.group(1))*1000-float(m.group(7)),float(m.group(7))))
phase=collections.Counter(int((t%10)/0.05) for t,_ in wlw).most_common(1)[0][0]*0.05
wt=[w[0] for w in wlw]; wlseg.sort(); st=[s[0] for s in wlseg]
k=int((wt[0]-phase)//10)+1
rel=collections.Counter(); hist=collections.Counter(); allhist=collections.Counter()
while phase+k*10<wt[-1]-10:
    D=phase+k*10-0.02; k+=1
    runs=wlseg[bisect.bisect_left(st,D):bisect.bisect_left(st,D+4)]
    if not runs: continue
    start=max(runs,key=lambda s:s[1])[0]
    before=[w for w in wlw[bisect.bisect_left(wt,D):bisect.bisect_left(wt,D+4)] if w[0]<=start]
    i=bisect.bisect_left(posts,D)-1
    gap=D-posts[i] if i>=0 else 99
    b=('<1' if gap<1 else '1-2' if gap<2 else '2-3' if gap<3 else '3-5' if gap<5 else '>5')
    allhist[b]+=1
    if start-D>0.8 and before and before[-1][1]=='plc-link': hist[b]+=1
print(name,'late ticks after plc-link, by time since the last block posted before the deadline (ms):',dict(hist))
print('   all ticks:',dict(allhist))
lkw=[]
for line in open(f'{name}.thw'):
    m=WAKE.match(line)
    if m and int(m.group(5))==lk: lkw.append((float(m.group(1))*1000,names.get(int(m.group(4)),m.group(3).strip())))
lt=[w[0] for w in lkw]
k=int((wt[0]-phase)//10)+1; shown=0
while phase+k*10<wt[-1]-10 and shown<12:
    D=phase+k*10-0.02; k+=1
    runs=wlseg[bisect.bisect_left(st,D):bisect.bisect_left(st,D+4)]
    if not runs: continue
    start=max(runs,key=lambda s:s[1])[0]
    before=[w for w in wlw[bisect.bisect_left(wt,D):bisect.bisect_left(wt,D+4)] if w[0]<=start]
    if start-D>0.8 and before and before[-1][1]=='plc-link':
        ws=lkw[bisect.bisect_left(lt,D-6):bisect.bisect_left(lt,start)]
        print(f"  late {start-D:.2f} ms; link woken at", [(round(t-D,2),who) for t,who in ws])
        shown+=1
