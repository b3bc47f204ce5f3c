# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}
function Assert-ImagingDiskOffline {
    # A disk of an old machine is read or changed on the host only while no running VM uses it.
    param([Parameter(Mandatory = $true)] [string] $Path)
    $users = @(Get-VM | Where-Object { [string]$_.State -ne 'Off' } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "$Path belongs to the running VM $($users[0].VMName); it is used only while its VM is off" }
}

function Mount-ImagingVolume {
    # Mounts a VHDX without a drive letter and exposes its largest data partition at a fresh, empty folder
    # in the temp directory. Callers hold the provider's per-host mount lock and always call
    # Dismount-ImagingVolume in a finally block.
    param([Parameter(Mandatory = $true)] [string] $Path, [switch] $ReadOnly)
    $mountArgs = @{ Path = $Path; NoDriveLetter = $true; PassThru = $true }
    if ($ReadOnly) { $mountArgs['ReadOnly'] = $true }
    $vhd = Mount-VHD @mountArgs
    $mounted = [ordered]@{ Path = $Path; Folder = $null; DiskNumber = $vhd.DiskNumber; PartitionNumber = $null; Label = $null }
    try {
        $disk = Get-Disk -Number $vhd.DiskNumber
        if ($disk.IsOffline) { Set-Disk -Number $disk.Number -IsOffline $false }
        $partition = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.Type -eq 'Basic' } |
            Sort-Object -Property Size -Descending)
        if ($partition.Count -eq 0) { throw "the disk $Path has no data partition" }
        $part = $partition[0]
        $mounted.PartitionNumber = $part.PartitionNumber
        $mounted.Label = [string](Get-Volume -Partition $part).FileSystemLabel
        $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('imaging-' + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $folder | Out-Null
        $mounted.Folder = $folder
        Add-PartitionAccessPath -DiskNumber $disk.Number -PartitionNumber $part.PartitionNumber -AccessPath ($folder + '\')
    }
    catch {
        Dismount-ImagingVolume -Mounted $mounted
        throw
    }
    return $mounted
}

function Dismount-ImagingVolume {
    # Undoes Mount-ImagingVolume. The mount folder is removed only when empty, never recursively, so a
    # volume that is still mounted there can never be deleted by accident.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Mounted)
    if ($null -ne $Mounted.Folder -and $null -ne $Mounted.PartitionNumber) {
        Remove-PartitionAccessPath -DiskNumber $Mounted.DiskNumber -PartitionNumber $Mounted.PartitionNumber `
            -AccessPath ($Mounted.Folder + '\') -ErrorAction SilentlyContinue
    }
    Dismount-VHD -Path $Mounted.Path
    if ($null -ne $Mounted.Folder -and (Test-Path -LiteralPath $Mounted.Folder -PathType Container)) {
        if (@(Get-ChildItem -LiteralPath $Mounted.Folder -Force).Count -eq 0) {
            [System.IO.Directory]::Delete($Mounted.Folder, $false)
        }
    }
}

function Get-ImagingVolumeFiles {
    # Every file under a mounted volume, as paths relative to its root. Reparse points (junctions, links)
    # are listed as skipped and never followed: on an offline disk they point into the host's own C:.
    param(
        [Parameter(Mandatory = $true)] [string] $Root,
        [string[]] $ExcludeRel = @()
    )
    $always = @('System Volume Information', '$Recycle.Bin', 'pagefile.sys', 'hiberfil.sys', 'swapfile.sys')
    $exclude = @($always + $ExcludeRel | ForEach-Object { $_.TrimEnd('\').ToLowerInvariant() })
    $files = New-Object System.Collections.Generic.List[object]
    $skipped = New-Object System.Collections.Generic.List[string]
    $pending = New-Object System.Collections.Generic.Stack[string]
    $pending.Push('')
    while ($pending.Count -gt 0) {
        $rel = $pending.Pop()
        $dir = New-Object System.IO.DirectoryInfo -ArgumentList (Join-Path -Path $Root -ChildPath $rel)
        try { $entries = @($dir.GetFileSystemInfos()) }
        catch { $skipped.Add($rel); continue }
        foreach ($entry in $entries) {
            $childRel = if ($rel) { $rel + '\' + $entry.Name } else { $entry.Name }
            if ($exclude -contains $childRel.ToLowerInvariant()) { continue }
            if (($entry.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $skipped.Add($childRel)
                continue
            }
            if ($entry -is [System.IO.DirectoryInfo]) { $pending.Push($childRel) }
            else {
                $files.Add([pscustomobject]@{ Rel = $childRel; Size = $entry.Length; Full = $entry.FullName })
            }
        }
    }
    return [pscustomobject]@{ Files = $files.ToArray(); Skipped = $skipped.ToArray() }
}

$ImagingAction = 'copy_from_disk'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Adoption (and its undo): copies folders and files off one disk into another's volume. The source is
    # mounted read-only on the host; either disk is refused while a running VM uses it. Every copied file is
    # compared by sha256 with its source; a file already there with the same content is kept, so a retry
    # copies only what is missing; a different one is moved to 'replaced_to' first when the copy names it.
    # The listing written last (<volume>\<listing_rel>) means done. The provider holds the host's mount lock.
    $SourcePath = 'D:\Hyper-V\NDXGEM\NDXGEM.vhdx'
    $DestPath = 'D:\Imaging\instruments\NDXGEM\NDXGEM-var.vhdx'
    $Copies = @([ordered]@{'from' = 'C:\LabVIEW Modules\var'; 'to' = 'legacy/LabVIEW Modules/var'}, [ordered]@{'from' = 'C:\Users\operator\Desktop\shift-notes.txt'; 'to' = 'rescued/20261130T001000000Z/files/Users/operator/Desktop/shift-notes.txt'}, [ordered]@{'from' = 'C:\'; 'to' = 'data'; 'skip' = @('adopted', 'System Volume Information'); 'replaced_to' = 'ProgramData/imaging/unadopted-20261130T001000000Z/replaced'})
    $ListingRel = 'rescued/20261130T001000000Z/rescued.json'
    foreach ($disk in @($SourcePath, $DestPath)) { Assert-ImagingDiskOffline -Path $disk }
    $src = Mount-ImagingVolume -Path $SourcePath -ReadOnly
    try {
        $dst = Mount-ImagingVolume -Path $DestPath
        try {
            $listing = Join-Path -Path $dst.Folder -ChildPath $ListingRel.Replace('/', '\')
            if (Test-Path -LiteralPath $listing -PathType Leaf) {
                $Result['how'] = 'already copied'
                $Result['files'] = @((ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($listing))).files).Count
            }
            else {
                $done = New-Object System.Collections.Generic.List[object]
                $replaced = New-Object System.Collections.Generic.List[object]
                foreach ($c in @($Copies)) {
                    # 'C:\' is the volume's root; 'skip' lists paths under 'from' that stay behind
                    $from = $src.Folder
                    if (([string]$c.from).Length -gt 3) { $from = Join-Path -Path $src.Folder -ChildPath ([string]$c.from).Substring(3) }
                    $skip = @()
                    if ($c.PSObject.Properties.Name -contains 'skip') { $skip = @($c.skip | ForEach-Object { ([string]$_).Replace('/', '\').ToLowerInvariant() }) }
                    $single = Test-Path -LiteralPath $from -PathType Leaf
                    $files = @()
                    if ($single) { $files = @(Get-Item -LiteralPath $from -Force) }
                    elseif (Test-Path -LiteralPath $from -PathType Container) {
                        $files = @(Get-ChildItem -LiteralPath $from -Recurse -File -Force |
                            Where-Object { ($_.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -eq 0 })
                    }
                    foreach ($f in $files) {
                        $rel = ''
                        if (-not $single) { $rel = $f.FullName.Substring($from.TrimEnd('\').Length + 1) }
                        $low = $rel.ToLowerInvariant()
                        if (@($skip | Where-Object { $low -eq $_ -or $low.StartsWith($_ + '\') }).Count -gt 0) { continue }
                        $target = Join-Path -Path $dst.Folder -ChildPath ([string]$c.to).Replace('/', '\')
                        if ($rel) { $target = Join-Path -Path $target -ChildPath $rel }
                        $hash = (Get-FileHash -LiteralPath $f.FullName -Algorithm SHA256).Hash.ToLowerInvariant()
                        $have = $null
                        if (Test-Path -LiteralPath $target -PathType Leaf) {
                            $have = (Get-FileHash -LiteralPath $target -Algorithm SHA256).Hash.ToLowerInvariant()
                        }
                        $written = ($have -ne $hash)
                        if ($written) {
                            if ($null -ne $have -and $c.PSObject.Properties.Name -contains 'replaced_to') {
                                # a different file of the same name is kept, moved aside first, and listed
                                $kept = Join-Path -Path (Join-Path -Path $dst.Folder -ChildPath ([string]$c.replaced_to).Replace('/', '\')) -ChildPath ([string]$c.to).Replace('/', '\')
                                if ($rel) { $kept = Join-Path -Path $kept -ChildPath $rel }
                                $keptParent = Split-Path -Path $kept -Parent
                                if (-not (Test-Path -LiteralPath $keptParent -PathType Container)) { New-Item -ItemType Directory -Path $keptParent -Force | Out-Null }
                                Move-Item -LiteralPath $target -Destination $kept -Force
                                $replaced.Add([ordered]@{ kept = $kept.Substring($dst.Folder.Length + 1).Replace('\', '/')
                                    to = $target.Substring($dst.Folder.Length + 1).Replace('\', '/') })
                            }
                            $parent = Split-Path -Path $target -Parent
                            if (-not (Test-Path -LiteralPath $parent -PathType Container)) { New-Item -ItemType Directory -Path $parent -Force | Out-Null }
                            Copy-Item -LiteralPath $f.FullName -Destination $target -Force
                            $check = (Get-FileHash -LiteralPath $target -Algorithm SHA256).Hash.ToLowerInvariant()
                            if ($check -ne $hash) { throw "the copy of $($f.FullName) did not verify" }
                        }
                        $fromWin = [string]$c.from
                        if ($rel) { $fromWin = $fromWin.TrimEnd('\') + '\' + $rel }
                        $done.Add([ordered]@{ from = $fromWin; to = $target.Substring($dst.Folder.Length + 1).Replace('\', '/')
                            sha256 = $hash; bytes = $f.Length; written = $written })
                    }
                }
                $parent = Split-Path -Path $listing -Parent
                if (-not (Test-Path -LiteralPath $parent -PathType Container)) { New-Item -ItemType Directory -Path $parent -Force | Out-Null }
                $text = ConvertTo-Json -Depth 4 -InputObject ([ordered]@{ source = $SourcePath; files = @($done.ToArray()); replaced = @($replaced.ToArray()) })
                [System.IO.File]::WriteAllText($listing, $text, (New-Object System.Text.UTF8Encoding -ArgumentList $false))
                $Result['changed'] = $true
                $Result['files'] = $done.Count
                $Result['replaced'] = $replaced.Count
                $Result['bytes'] = [long](($done | ForEach-Object { $_.bytes } | Measure-Object -Sum).Sum)
            }
        }
        finally { Dismount-ImagingVolume -Mounted $dst }
    }
    finally { Dismount-ImagingVolume -Mounted $src }
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
